"""SpecBlock network and training pieces against hand-computed small cases (design §4-§5)."""

import torch

from specblock.drafters.specblock_model import (
    InputLayer,
    SpecBlockConfig,
    SpecBlockModel,
    block_mask,
    rank_class,
    rank_features,
    shift_slots,
)
from specblock.training.specblock_loss import inherited_mask, ordinal_soft_labels, valid_prefix


def test_block_mask_by_hand():
    # 2 positions x K=2: rows/cols (0,0) (0,1) (1,0) (1,1)
    expected = torch.tensor(
        [
            [1, 0, 0, 0],  # (0,0) sees itself
            [1, 1, 0, 0],  # (0,1) sees slots 0..1 of position 0
            [1, 1, 1, 0],  # (1,0) sees all of position 0 and itself
            [1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(block_mask(2, 2), expected)


def test_inherited_mask_by_hand():
    # block 2 with offset s=1 over keys [block 1 ; block 2], 2 positions x K=2
    m = inherited_mask(2, 2, [1])
    block1 = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(m[:, :4], block1)  # positions < i all slots, position i slots < s
    assert torch.equal(m[:, 4:], block_mask(2, 2))
    # block 3 with offsets (2, 1): block 2's keys only at the same position, slots < 1
    m3 = inherited_mask(2, 2, [2, 1])
    block2_part = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(m3[:, 4:8], block2_part)
    assert torch.equal(m3[:, :4], torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool))


def test_shift_hands_slot_k_the_hidden_of_slot_k_minus_1():
    h = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)  # P=2, K=3, H=4
    s = shift_slots(h)
    assert torch.equal(s[:, :, 0], h[:, :, 0])
    assert torch.equal(s[:, :, 1], h[:, :, 0])
    assert torch.equal(s[:, :, 2], h[:, :, 1])


def test_valid_prefix_worked_example():
    # design §5: all slots ok; drafter right at slots 0 and 1, wrong at slot 2 -> v = 1, 1, 1, 0
    ok = torch.tensor([[True, True, True, True]])
    correct = torch.tensor([[True, True, False, True]])
    assert valid_prefix(ok, correct).tolist() == [[True, True, True, False]]
    # a not-ok slot breaks the chain even when the drafter was right before it
    ok2 = torch.tensor([[True, False, True, True]])
    assert valid_prefix(ok2, torch.ones(1, 4, dtype=torch.bool)).tolist() == [[True, False, False, False]]


def test_rank_classes_and_ordinal_labels():
    assert rank_class(torch.tensor([1, 2, 4, 5, 10, 11, 10**6])).tolist() == [0, 1, 1, 2, 2, 3, 3]
    labels = ordinal_soft_labels(torch.tensor([1]))[0]
    raw = torch.tensor([1 / 9, 1, 1 / 4, 1 / 9])  # c=0: 1/(1+1+1)^2, c=1: 1, c=2: 1/(1+1)^2, c=3: 1/(1+2)^2
    assert torch.allclose(labels, raw / raw.sum())


def test_rank_features_shape_and_values():
    logits = torch.tensor([[3.0, 2.0, 1.0] + [-5.0] * 30])
    f = rank_features(logits)
    assert f.shape == (1, 15)
    assert torch.isclose(f[0, 10], torch.tensor(1.0))  # top1 - top2 gap
    assert torch.isclose(f[0, 11], torch.tensor(2.0))  # top1 - top3
    assert torch.isclose(f[0, 13], torch.softmax(logits, -1).max())  # top-1 probability


def test_input_layer_is_fuse_of_condition_token_and_slot_query():
    """Design §4's slot input, fuse([norm(cond) ; norm(embed) ; norm(query_k)]), written out as one
    product per slot; the layer computes it in two parts (per position, per slot), in training
    and in drafting (inference weights), from target features and from inherited hiddens."""
    torch.manual_seed(0)
    cfg = SpecBlockConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=4, target_hidden_size=6, target_vocab_size=32, draft_vocab_size=16)  # fmt: skip
    layer = InputLayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    embeds = torch.randn(2, 3, 8)
    for condition, inherited in ((torch.randn(2, 3, 18), False), (torch.randn(2, 3, 8), True)):
        c = condition if inherited else layer.condition_proj(condition)
        want = torch.stack([
            layer.fuse(torch.cat([layer.condition_norm(c), layer.token_norm(embeds),
                                  layer.query_norm(layer.position_queries[k]).expand(2, 3, 8)], dim=-1))
            for k in range(cfg.block_size)
        ], dim=2)  # fmt: skip
        torch.testing.assert_close(layer(condition, embeds, inherited), want)
        with torch.inference_mode():
            torch.testing.assert_close(layer(condition, embeds, inherited), want)


def tiny_config(**overrides) -> SpecBlockConfig:
    return SpecBlockConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=4, target_hidden_size=6, target_vocab_size=32, draft_vocab_size=16, **overrides)  # fmt: skip


def test_shift_starts_as_identity_and_leaves_slot0_unprojected():
    torch.manual_seed(0)
    h = torch.randn(2, 3, 4, 8)  # B, P, K, H
    torch.testing.assert_close(SpecBlockModel(tiny_config()).shift(1, h), h)  # [I ; 0]: every slot keeps its hidden
    assert not torch.allclose(SpecBlockModel(tiny_config(shift_slot0=True)).shift(1, h), h)  # the design: default init
    ours, design = SpecBlockModel(tiny_config()), SpecBlockModel(tiny_config(shift_slot0=True))
    torch.nn.init.normal_(ours.shift_proj[0].weight)
    design.load_state_dict(ours.state_dict())
    projected = ours.shift_proj[0](torch.cat([h, shift_slots(h)], dim=-1))  # the design's h <- proj([h ; shift(h)])
    torch.testing.assert_close(design.shift(1, h), projected)
    out = ours.shift(1, h)
    assert torch.equal(out[:, :, 0], h[:, :, 0])
    torch.testing.assert_close(out[:, :, 1:], projected[:, :, 1:])
    with torch.inference_mode():  # drafting goes through the inference weights: the same function
        torch.testing.assert_close(ours.shift(1, h), out)


def test_a_config_saved_before_shift_slot0_loads_as_the_design():
    saved = tiny_config().to_dict()
    assert SpecBlockConfig.from_dict(saved).shift_slot0 is False
    del saved["shift_slot0"]  # the shipped smollm2 drafters were trained projecting slot 0
    assert SpecBlockConfig.from_dict(saved).shift_slot0 is True


def test_slot0_of_a_block_does_not_depend_on_the_shift_projection():
    """One position: slot 0 attends only to itself, so with slot 0 unprojected its final hidden
    cannot depend on shift_proj; slot 1's does, and so does slot 0's in the design's form."""
    torch.manual_seed(0)
    condition, tokens, positions = torch.randn(1, 1, 18), torch.tensor([[3]]), torch.zeros(1, 1, dtype=torch.long)
    for slot0 in (False, True):
        model = SpecBlockModel(tiny_config(shift_slot0=slot0))
        model.embed_tokens = torch.randn(32, 8)
        outs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            torch.nn.init.normal_(model.shift_proj[0].weight)
            outs.append(model.blocks(condition, tokens, positions, block_mask(1, 4)[None]).hidden[0, 0])
        assert torch.equal(outs[0][0], outs[1][0]) is not slot0
        assert not torch.allclose(outs[0][1], outs[1][1])
