"""Drafter checkpoints (save / load / checks), the SGLang/vLLM export and the CLI around them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model
from neural_helpers import random_eagle3, random_specblock
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from specblock.cli import app
from specblock.drafters.checkpoint import load_drafter, save_drafter
from specblock.drafters.export import export_sglang
from specblock.errors import SpecBlockError
from specblock.target.transformer import Transformer

BUILDERS = {"specblock": random_specblock, "eagle3": random_eagle3}
EXPORT_KEYS = {
    "fc.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
    "lm_head.weight",
    "d2t",
    "t2d",
}


@pytest.fixture(scope="module")
def target(tiny_llama) -> Transformer:
    return Transformer.load(tiny_llama)


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    """A tiny Llama with 8 layers: enough for distinct, increasing feature layers (2, 4, 5)."""
    return build_tiny_model(tmp_path_factory.mktemp("deep_llama"), "llama", seed=3, layers=8)


def saved(model, path):
    save_drafter(model, path)
    return path


def load(path, target, method=None):
    return load_drafter(path, target.cfg, target.embed.float(), method=method)


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_round_trip(target, tmp_path, method):
    model = BUILDERS[method](target)
    path = saved(model, tmp_path / "drafter")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["method"] == method and config["torch_dtype"] == "float16"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert not any("embed" in k for k in keys)
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys if k not in ("d2t", "t2d"))
    loaded = load(path, target, method=method)
    assert type(loaded) is type(model)
    original = model.state_dict()
    for name, t in loaded.state_dict().items():
        if name == "embed_tokens":
            assert torch.equal(t, target.embed.float())
        elif t.is_floating_point():
            assert t.dtype == torch.float32
            assert torch.equal(t, original[name].half().float()), name
        else:
            assert torch.equal(t, original[name]), name
    assert loaded.d2t.dtype == torch.long and loaded.t2d.dtype == torch.bool
    assert not loaded.training


def test_save_replaces_an_earlier_checkpoint(target, tmp_path):
    path = saved(random_eagle3(target, seed=0), tmp_path / "d")
    newer = random_eagle3(target, seed=1)
    save_drafter(newer, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert torch.equal(load(path, target).fc.weight, newer.fc.weight.half().float())


@pytest.mark.parametrize(
    "kwargs, words", [({"hidden": 32}, "hidden size"), ({"vocab": 120}, "vocabulary")], ids=["hidden", "vocab"]
)
def test_load_into_another_target_fails_clearly(target, tmp_path, kwargs, words):
    path = saved(random_eagle3(target), tmp_path / "d")
    other = Transformer.load(build_tiny_model(tmp_path / "other", tokenizer=False, **kwargs))
    with pytest.raises(SpecBlockError, match=words):
        load(path, other)


def test_a_target_of_the_same_shapes_but_other_weights_is_refused(target, tiny_llama, tmp_path):
    path = saved(random_eagle3(target), tmp_path / "d")
    assert len(json.loads((path / "config.json").read_text())["target_fingerprint"]) == 32
    twin = Transformer.load(build_tiny_model(tmp_path / "twin", seed=9, tokenizer=False))  # same shapes as tiny_llama
    with pytest.raises(SpecBlockError, match="trained for another target"):
        load(path, twin)
    for dtype in (torch.bfloat16, torch.float16):  # the target in any compute dtype is the same target
        load_drafter(path, target.cfg, Transformer.load(tiny_llama, dtype).embed, method="eagle3")
    half = saved(random_eagle3(Transformer.load(tiny_llama, torch.float16)), tmp_path / "from_fp16")
    load(half, target)  # and a drafter saved beside an fp16 target loads for the fp32 one
    config = json.loads((path / "config.json").read_text())
    del config["target_fingerprint"]  # checkpoints from before fingerprints still load
    (path / "config.json").write_text(json.dumps(config))
    load(path, twin)


def test_corrupt_weights(target, tmp_path):
    path = saved(random_specblock(target), tmp_path / "d")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecBlockError, match="model.safetensors"):
        load(path, target)
    (path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(SpecBlockError, match="model.safetensors"):
        load(path, target)
    (path / "model.safetensors").unlink()
    with pytest.raises(SpecBlockError, match="model.safetensors"):
        load(path, target)


def test_missing_or_bad_config(target, tmp_path):
    path = saved(random_eagle3(target), tmp_path / "d")
    (path / "config.json").write_text("{not json")
    with pytest.raises(SpecBlockError, match="not valid JSON"):
        load(path, target)
    (path / "config.json").unlink()
    with pytest.raises(SpecBlockError, match="no config.json"):
        load(path, target)
    with pytest.raises(SpecBlockError, match="no config.json"):
        load(tmp_path / "nowhere", target)


def test_method_mismatch(target, tmp_path):
    path = saved(random_eagle3(target), tmp_path / "d")
    with pytest.raises(SpecBlockError, match="'eagle3' drafter, not a 'specblock'"):
        load(path, target, method="specblock")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"method": "medusa"}))
    with pytest.raises(SpecBlockError, match="unknown drafter method 'medusa'"):
        load(path, target)


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_vocabulary_maps_must_agree(target, tmp_path, method):
    path = saved(BUILDERS[method](target), tmp_path / "d")
    weights = load_file(str(path / "model.safetensors"))
    t2d = weights["t2d"].clone()
    t2d[int(torch.nonzero(t2d)[0])] = False  # a draft token whose target id is no longer marked
    save_file(weights | {"t2d": t2d}, str(path / "model.safetensors"))
    with pytest.raises(SpecBlockError, match="d2t and t2d disagree"):
        load(path, target)
    d2t = weights["d2t"].clone()
    last, unmarked = d2t.numel() - 1, int(torch.nonzero(~weights["t2d"])[0])
    d2t[last] = unmarked - last  # maps a draft token to a target token t2d does not mark
    save_file(weights | {"d2t": d2t}, str(path / "model.safetensors"))
    with pytest.raises(SpecBlockError, match="d2t and t2d disagree"):
        load(path, target)


def test_wrong_weight_shape_or_key(target, tmp_path):
    path = saved(random_eagle3(target), tmp_path / "d")
    weights = load_file(str(path / "model.safetensors"))
    save_file(weights | {"fc.weight": weights["fc.weight"][:, :10].contiguous()}, str(path / "model.safetensors"))
    with pytest.raises(SpecBlockError, match="fc.weight has shape"):
        load(path, target)
    save_file({k: v for k, v in weights.items() if k != "norm.weight"}, str(path / "model.safetensors"))
    with pytest.raises(SpecBlockError, match="missing"):
        load(path, target)


# --- export -------------------------------------------------------------------------------


def test_export_sglang_layout(deep_llama, tmp_path):
    deep = Transformer.load(deep_llama)
    model = random_eagle3(deep)
    path = saved(model, tmp_path / "d")
    out = tmp_path / "export"
    export_sglang(path, out, deep_llama)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == EXPORT_KEYS
    assert weights["d2t"].dtype == torch.int64 and weights["t2d"].dtype == torch.bool
    assert torch.equal(weights["d2t"], model.d2t) and torch.equal(weights["t2d"], model.t2d)
    for name, t in model.state_dict().items():
        if name in EXPORT_KEYS and t.is_floating_point():
            assert weights[name].dtype == torch.float16
            assert torch.equal(weights[name], t.half()), name
    h, c = deep.cfg.hidden_size, model.cfg
    assert weights["midlayer.self_attn.q_proj.weight"].shape == (c.num_attention_heads * c.head_dim, 2 * h)
    assert weights["fc.weight"].shape == (h, 3 * h)
    assert weights["lm_head.weight"].shape == (c.draft_vocab_size, h)

    config = json.loads((out / "config.json").read_text())
    raw_target = json.loads((deep_llama / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "num_hidden_layers": 1,
        "vocab_size": raw_target["vocab_size"],
        "draft_vocab_size": c.draft_vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,  # the drafter's own (== the target's here)
        "max_position_embeddings": raw_target["max_position_embeddings"],
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    assert {k: config[k] for k in expected} == expected
    assert config["rope_theta"] == deep.cfg.rope_theta and config["rope_scaling"] is None
    # 8 layers: features are HF hidden states (2, 4, 5) = outputs of decoder layers (1, 3, 4).
    assert deep.cfg.feature_layers == (2, 4, 5)
    assert config["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": [1, 3, 4], "use_aux_hidden_state": True}
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]
    assert [i + 1 for i in deep._capture_after] == config["eagle_aux_hidden_state_layer_ids"]
    assert deep._capture_after == config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]

    # An earlier export is replaced; anything else at --out is left alone.
    export_sglang(path, out, deep_llama)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["d", "export"]  # cache: kernel table
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(SpecBlockError, match="not an earlier export"):
        export_sglang(path, tmp_path / "precious", deep_llama)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_export_refuses_bad_inputs(deep_llama, target, tiny_llama, tmp_path):
    deep = Transformer.load(deep_llama)
    specblock = saved(random_specblock(deep), tmp_path / "sb")
    with pytest.raises(SpecBlockError, match="only EAGLE-3 drafters can be exported"):
        export_sglang(specblock, tmp_path / "out", deep_llama)
    with pytest.raises(SpecBlockError, match="no config.json"):
        export_sglang(tmp_path / "missing", tmp_path / "out", deep_llama)
    # A drafter for another vocabulary than the target's.
    other_vocab = saved(
        random_eagle3(Transformer.load(build_tiny_model(tmp_path / "v", vocab=120, layers=8))), tmp_path / "e"
    )
    with pytest.raises(SpecBlockError, match="vocabulary"):
        export_sglang(other_vocab, tmp_path / "out", deep_llama)
    # Four layers: the clamped feature layers (2, 2, 1) repeat, which the engines cannot capture.
    shallow = saved(random_eagle3(target), tmp_path / "shallow")
    with pytest.raises(SpecBlockError, match="too few"):
        export_sglang(shallow, tmp_path / "out", tiny_llama)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_cli_export(deep_llama, tmp_path):
    path = saved(random_eagle3(Transformer.load(deep_llama)), tmp_path / "d")
    out = tmp_path / "sglang"
    result = CliRunner().invoke(app, ["export", str(path), "--out", str(out), "--target", str(deep_llama)])
    assert result.exit_code == 0, result.output
    assert set(load_file(str(out / "model.safetensors"))) == EXPORT_KEYS
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3"]

    specblock = saved(random_specblock(Transformer.load(deep_llama)), tmp_path / "sb")
    for args in (
        ["export", str(specblock), "--out", str(tmp_path / "x"), "--target", str(deep_llama)],
        ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--target", str(deep_llama)],
        ["export", str(path), "--out", str(tmp_path / "x"), "--target", str(deep_llama), "--format", "onnx"],
    ):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 1, bad.output
        assert "Traceback" not in bad.output and isinstance(bad.exception, SystemExit), bad.output
        # One error message (rich wraps it at the test console's 80 columns).
        assert bad.output.startswith("error:") and bad.output.count("error:") == 1, bad.output


@pytest.mark.parametrize("method", ["eagle3", "specblock"])
def test_cli_generate_with_a_drafter(target, tiny_llama, tmp_path, method):
    path = saved(BUILDERS[method](target), tmp_path / "d")
    args = [
        "generate", "--method", method, "--drafter", str(path), "--target", str(tiny_llama), "--raw",
        "--prompt", "abc", "--max-new-tokens", "8", "--node-budget", "6", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["new_tokens"] == len(data["token_ids"]) == 8
    assert data["method"] == method and data["node_budget"] == 6
    reference = CliRunner().invoke(app, [*args[:2], "vanilla", *args[5:]])
    assert reference.exit_code == 0, reference.output
    assert json.loads(reference.stdout.strip().splitlines()[-1])["token_ids"] == data["token_ids"]  # lossless


def test_cli_generate_bad_node_budget_or_drafter(tiny_llama, tmp_path):
    base = ["generate", "--target", str(tiny_llama), "--raw", "--prompt", "abc", "--max-new-tokens", "2"]
    bad = CliRunner().invoke(app, [*base, "--method", "lookup", "--node-budget", "lots"])
    assert bad.exit_code == 1 and "node budget must be a number" in " ".join(bad.output.split()), bad.output
    missing = CliRunner().invoke(app, [*base, "--method", "eagle3", "--drafter", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split()), missing.output
