"""`specblock export --format gguf`: an EAGLE-3 drafter as llama.cpp's converter writes one,
read back with the `gguf` package."""

import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_model
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from neural_helpers import random_eagle3, random_specblock
from typer.testing import CliRunner

from specblock.cli import app
from specblock.drafters.checkpoint import save_drafter
from specblock.drafters.export_gguf import TENSOR_NAMES, export_gguf, rope_pairs_adjacent
from specblock.errors import SpecBlockError
from specblock.target.transformer import Transformer


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    """8 layers: distinct, increasing feature layers (2, 4, 5)."""
    return build_tiny_model(tmp_path_factory.mktemp("deep_llama_gguf"), "llama", seed=3, layers=8)


def target_gguf(path, vocab=128):
    """A stand-in for the target's GGUF: just its architecture and tokenizer keys."""
    w = GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(vocab)])
    w.add_array("tokenizer.ggml.token_type", [1] * vocab)
    w.add_array("tokenizer.ggml.merges", ["t 1", "t 2"])
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    w.add_tensor("token_embd.weight", np.zeros((vocab, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def exported(deep_llama, tmp_path):
    target = Transformer.load(deep_llama)
    model = random_eagle3(target, intermediate_size=target.cfg.intermediate_size - 16)  # compact, as the 1.5B's
    save_drafter(model, tmp_path / "drafter")
    out = tmp_path / "draft.gguf"
    export_gguf(tmp_path / "drafter", out, deep_llama, target_gguf(tmp_path / "target.gguf"))
    return model, GGUFReader(str(out)), GGUFReader(str(tmp_path / "target.gguf"))


def test_metadata_follows_llama_cpps_eagle3_conventions(exported):
    model, reader, _ = exported
    c = model.cfg
    f = {name: field.contents() for name, field in reader.fields.items()}
    assert f["general.architecture"] == "eagle3"
    assert reader.fields["eagle3.target_layers"].types == [GGUFValueType.ARRAY, GGUFValueType.INT32]
    assert f["eagle3.target_layers"] == [2, 4, 5]  # HF hidden-state indices = llama.cpp's layer inputs
    assert f["eagle3.target_hidden_size"] == c.target_hidden_size
    assert f["eagle3.norm_before_residual"] is False and f["eagle3.norm_before_fc"] is False
    assert f["eagle3.block_count"] == 1 and f["eagle3.embedding_length"] == c.hidden_size
    assert f["eagle3.feed_forward_length"] == c.intermediate_size  # the drafter's own width, not the target's
    assert f["eagle3.attention.head_count"] == c.num_attention_heads
    assert f["eagle3.attention.head_count_kv"] == c.num_key_value_heads
    assert f["eagle3.rope.dimension_count"] == c.head_dim and f["eagle3.vocab_size"] == c.target_vocab_size
    assert math.isclose(f["eagle3.rope.freq_base"], c.rope_theta)


def test_tokenizer_is_the_targets(exported):
    _, reader, target = exported
    want = {n: f.contents() for n, f in target.fields.items() if n.startswith("tokenizer.")}
    got = {n: f.contents() for n, f in reader.fields.items() if n.startswith("tokenizer.")}
    assert got == want and len(got["tokenizer.ggml.tokens"]) == 128


def test_tensors_renamed_typed_and_d2t_absolute(exported):
    model, reader, _ = exported
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(TENSOR_NAMES.values()) | {"d2t"}  # no t2d, no token embeddings
    state = model.state_dict()
    for source, name in TENSOR_NAMES.items():
        t = tensors[name]
        want = state[source].float()
        assert t.tensor_type.name == ("F32" if want.dim() == 1 else "F16"), name
        data = torch.from_numpy(np.array(t.data)).float().reshape(want.shape)
        if "q_proj" in source or "k_proj" in source:
            heads = model.cfg.num_attention_heads if "q_proj" in source else model.cfg.num_key_value_heads
            want = rope_pairs_adjacent(want, heads)
        torch.testing.assert_close(data, want, atol=2e-3, rtol=2e-3)
    assert list(tensors["fc.weight"].shape) == [3 * model.cfg.target_hidden_size, model.cfg.hidden_size]  # ggml ne
    d2t = torch.from_numpy(np.array(tensors["d2t"].data))
    assert tensors["d2t"].tensor_type.name == "I64"
    assert torch.equal(d2t, model.d2t + torch.arange(model.cfg.draft_vocab_size))
    assert torch.equal(d2t, torch.nonzero(model.t2d).flatten())  # each draft id's target id


def _rotate_half(x, pos, base):
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2).float() / d)
    angle = pos * inv
    cos, sin = torch.cat([angle.cos()] * 2), torch.cat([angle.sin()] * 2)
    return x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1) * sin


def _interleaved(x, pos, base):
    """llama.cpp's Llama (NORM) RoPE: rotates adjacent pairs (2d, 2d+1) by pos * base^(-2d/D)."""
    d = x.shape[-1]
    angle = pos * base ** (-torch.arange(0, d, 2).float() / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * angle.cos() - odd * angle.sin()
    out[..., 1::2] = even * angle.sin() + odd * angle.cos()
    return out


def test_reordered_q_k_give_the_same_attention_scores_under_llama_cpps_rope():
    torch.manual_seed(0)
    heads, kv_heads, d, width = 4, 2, 16, 24
    wq, wk = torch.randn(heads * d, width), torch.randn(kv_heads * d, width)
    x_q, x_k = torch.randn(width), torch.randn(width)
    pq, pk = 7.0, 3.0
    for h in range(heads):
        g = h // (heads // kv_heads)
        q = _rotate_half((wq @ x_q).view(heads, d)[h], pq, 10000.0)
        k = _rotate_half((wk @ x_k).view(kv_heads, d)[g], pk, 10000.0)
        q2 = _interleaved((rope_pairs_adjacent(wq, heads) @ x_q).view(heads, d)[h], pq, 10000.0)
        k2 = _interleaved((rope_pairs_adjacent(wk, kv_heads) @ x_k).view(kv_heads, d)[g], pk, 10000.0)
        torch.testing.assert_close(q @ k, q2 @ k2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rope_pairs_adjacent(wq, heads), wq)


def test_refuses_specblock_drafters_and_another_targets_gguf(deep_llama, tmp_path):
    target = Transformer.load(deep_llama)
    save_drafter(random_specblock(target), tmp_path / "sb")
    good = target_gguf(tmp_path / "t.gguf")
    with pytest.raises(SpecBlockError, match="only EAGLE-3"):
        export_gguf(tmp_path / "sb", tmp_path / "x.gguf", deep_llama, good)
    save_drafter(random_eagle3(target), tmp_path / "e3")
    with pytest.raises(SpecBlockError, match="64 tokens, the drafter's target has 128"):
        export_gguf(tmp_path / "e3", tmp_path / "x.gguf", deep_llama, target_gguf(tmp_path / "small.gguf", vocab=64))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(SpecBlockError, match="cannot read the target GGUF"):
        export_gguf(tmp_path / "e3", tmp_path / "x.gguf", deep_llama, tmp_path / "junk.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_gguf(deep_llama, tmp_path):
    save_drafter(random_eagle3(Transformer.load(deep_llama)), tmp_path / "e3")
    gguf = target_gguf(tmp_path / "t.gguf")
    args = ["export", str(tmp_path / "e3"), "--format", "gguf", "--out", str(tmp_path / "d.gguf"),
            "--target", str(deep_llama), "--target-gguf", str(gguf)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--spec-type draft-eagle3" in result.output and (tmp_path / "d.gguf").is_file()
    missing = CliRunner().invoke(app, args[:-2])
    assert missing.exit_code == 1 and "--target-gguf is needed" in missing.output
    bad = CliRunner().invoke(app, [*args[:3], "onnx", *args[4:]])
    assert bad.exit_code == 1 and "sglang, gguf" in bad.output
