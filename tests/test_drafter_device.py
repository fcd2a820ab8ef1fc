"""Drafters run where the target runs: its dtype and device, with their caches there too,
fed the target's features without a copy to the host."""

import pytest
import torch
from helpers import run_decode
from neural_helpers import random_eagle3, random_specblock

from specblock.drafters.eagle3 import Eagle3Drafter
from specblock.drafters.specblock import SpecBlockDrafter
from specblock.target.transformer import Transformer


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_a_bf16_target_gets_a_bf16_drafter_cache_and_features_on_its_device(tiny_llama, method):
    target = Transformer.load(tiny_llama, dtype=torch.bfloat16)
    net = (random_specblock if method == "specblock" else random_eagle3)(target)
    net.embed_tokens = target.embed  # as the loader attaches it: the target's table, not a copy
    drafter = SpecBlockDrafter(net) if method == "specblock" else Eagle3Drafter(net)
    seen: list[torch.Tensor] = []
    take = drafter.pending.take

    def spy(dtype=None):
        features, tokens = take(dtype)
        seen.append(features)
        return features, tokens

    drafter.pending.take = spy
    out, stats = run_decode(target, drafter, [5, 17, 33, 9, 41], max_new_tokens=12, node_budget=8)
    assert len(out) == 12 and stats.drafter_forwards > 0
    assert drafter.cache.keys.dtype == torch.bfloat16 and drafter.cache.keys.device == target.device
    assert seen and all(f.dtype == torch.bfloat16 and f.device == target.device for f in seen)
    # the fused drafting weights are made once in the target's dtype, not per call
    def fused_weights() -> dict:  # the layers' stores and `drafting_linear`'s, per module
        return {(id(module), store, name): id(lin) for module in net.modules()
                for store in ("inference", "_inference_weights")
                for name, (_, lin) in getattr(getattr(module, store, None), "_made", {}).items()}  # fmt: skip

    made = fused_weights()
    assert made and any(key[1] == "_inference_weights" for key in made)
    run_decode(target, drafter, [5, 17, 33, 9, 41], max_new_tokens=6, node_budget=8)
    assert fused_weights() == made


def test_a_changed_weight_rebuilds_the_fused_drafting_weights(tiny_llama):
    target = Transformer.load(tiny_llama)
    net = random_specblock(target)
    attn = net.layers[0].self_attn
    x = torch.randn(1, 3, net.cfg.hidden_size)
    with torch.inference_mode():
        before = attn._qkv(x)[0].clone()
    with torch.no_grad():
        attn.q_proj.weight.mul_(2.0)  # what an optimizer step or a state-dict load does: in place
    with torch.inference_mode():
        after = attn._qkv(x)[0]
    torch.testing.assert_close(after, 2 * before)
    # the input layer's two parts of one weight (`drafting_linear` with columns) follow it too
    layer = net.input_layer
    cond, embeds = torch.randn(1, 3, net.cfg.hidden_size), torch.randn(1, 3, net.cfg.hidden_size)
    with torch.inference_mode():
        before = layer(cond, embeds, inherited=True).clone()
    with torch.no_grad():
        layer.fuse.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(layer(cond, embeds, inherited=True), 2 * before)
