"""The lean runner computes what Hugging Face transformers computes, for every supported family."""

import pytest
import torch

from specblock.target.config import ModelConfig
from specblock.target.transformer import Transformer


def hf_reference(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids[None], output_hidden_states=True)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_qwen3"])
def test_logits_and_features_match_transformers(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    ids = torch.randint(3, 128, (24,), generator=torch.Generator().manual_seed(3))
    ref = hf_reference(model_dir, ids)
    model = Transformer.load(model_dir)
    out = model.forward(ids, torch.arange(24), model.new_cache(32), 0, capture=True)
    torch.testing.assert_close(model.logits(out.hidden), ref.logits[0], atol=1e-4, rtol=1e-4)
    layers = model.cfg.feature_layers
    expected = torch.cat([ref.hidden_states[i][0] for i in layers], dim=-1)
    torch.testing.assert_close(out.features, expected, atol=1e-4, rtol=1e-4)


def test_incremental_forward_matches_full_forward(tiny_llama):
    model = Transformer.load(tiny_llama)
    ids = torch.randint(3, 128, (20,), generator=torch.Generator().manual_seed(4))
    full = model.logits(model.forward(ids, torch.arange(20), model.new_cache(32), 0).hidden)
    cache = model.new_cache(32)
    model.forward(ids[:8], torch.arange(8), cache, 0)
    mid = model.logits(model.forward(ids[8:15], torch.arange(8, 15), cache, 8).hidden)
    last = model.logits(model.forward(ids[15:16], torch.arange(15, 16), cache, 15).hidden)
    torch.testing.assert_close(mid, full[8:15], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last, full[15:16], atol=1e-4, rtol=1e-4)


def test_bfloat16_stays_close_to_float32(tiny_qwen2):
    ids = torch.randint(3, 128, (16,), generator=torch.Generator().manual_seed(5))
    f32 = Transformer.load(tiny_qwen2)
    b16 = Transformer.load(tiny_qwen2, dtype=torch.bfloat16)
    a = f32.logits(f32.forward(ids, torch.arange(16), f32.new_cache(16), 0).hidden)
    b = b16.logits(b16.forward(ids, torch.arange(16), b16.new_cache(16), 0).hidden)
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_feature_layers_follow_the_design():
    cfg = ModelConfig.from_dict(
        {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
         "num_hidden_layers": 30, "num_attention_heads": 2}
    )  # fmt: skip
    assert cfg.feature_layers == (2, 15, 27)
