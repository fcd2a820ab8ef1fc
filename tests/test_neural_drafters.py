"""SpecBlock and EAGLE-3 drafters in the engine: lossless greedy output, drafting rules,
forward counts, and incremental drafter state equal to recomputing from scratch."""

import pytest
import torch

from specblock.drafters.base import PrefillFeedback, VerifyFeedback
from specblock.drafters.eagle3 import Eagle3Drafter, scaled_shape
from specblock.drafters.scored_tree import ROOT, CandidatePool
from specblock.drafters.specblock import SpecBlockDrafter, block_two_seeds, slot_width
from specblock.drafters.specblock_model import block_mask
from specblock.drafters.vanilla import VanillaDrafter
from specblock.target.kv_cache import KVCache
from specblock.target.primitives import CAUSAL, attend
from specblock.target.transformer import Transformer
from specblock.training.eagle3_loss import ttt_mask

from helpers import run_decode
from neural_helpers import random_eagle3, random_specblock
from test_decoding import prompts


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("method", ["specblock", "eagle3"])
@pytest.mark.parametrize("budget", [6, 59])
def test_random_drafter_greedy_equals_vanilla(arch, method, budget, request):
    model = Transformer.load(request.getfixturevalue(arch))
    net = random_specblock(model) if method == "specblock" else random_eagle3(model)
    drafter = SpecBlockDrafter(net) if method == "specblock" else Eagle3Drafter(net)
    for prompt in prompts(3, seed=11):
        want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=40)
        drafter.forwards = 0
        got, stats = run_decode(model, drafter, prompt, max_new_tokens=40, node_budget=budget)
        assert got == want
        iters = stats.target_forwards - 1
        assert max(stats.tree_sizes) <= budget and max(stats.tree_sizes) > 0
        if method == "specblock":
            assert drafter.forwards <= 2 * iters  # block 1 + (when a seed can reach the budget) block 2
        else:
            top_k, depth = scaled_shape(budget)
            # depth + 1 forwards per drafted tree (the last iterations may not draft at all)
            assert drafter.forwards % (depth + 1) == 0 and drafter.forwards <= (depth + 1) * iters


def test_scored_pool_merges_and_keeps_ancestors_within_budget():
    pool = CandidatePool()
    a = pool.add(5, ROOT, -0.1)
    b = pool.add(6, a, -0.2)
    assert pool.add(5, ROOT, -0.05) == a and pool.scores[a] == -0.05  # merged, best score kept
    c = pool.add(7, b, -0.3)
    pool.add(8, ROOT, -1.0)
    tree = pool.to_tree(3)
    assert tree.tokens == [5, 6, 7] and tree.parents == [-1, 0, 1]
    tree.validate(3)
    assert pool.best(2) == [a, b] and c not in pool.best(2)


def test_block_two_runs_the_best_reachable_seeds_at_most_budget_over_k():
    pool = CandidatePool()
    scores = [-0.1, -0.5, -0.2, -0.9, -0.3, -0.4, -2.0]
    nodes = [pool.add(tok, ROOT, score) for tok, score in enumerate(scores)]
    seeds = [(node, slot) for slot, node in enumerate(nodes)]
    # budget 8, K = 4: all 7 nodes reachable, 2 seeds run, the best two in growth order
    assert block_two_seeds(pool, seeds, 8, 4) == [seeds[0], seeds[2]]
    # budget 6: the worst node is outside the best 6 and never runs; cap 6 // 1 = 6 keeps the rest
    assert block_two_seeds(pool, seeds, 6, 1) == seeds[:6]
    assert block_two_seeds(pool, seeds, 3, 4) == [seeds[0]]  # at least one seed
    # a seed outside the budget's best nodes never runs, even when the cap has room
    assert block_two_seeds(pool, seeds[3:], 5, 1) == [seeds[4], seeds[5]]


def test_slot_widths_follow_the_design_tables():
    assert [slot_width(0, p, 0) for p in (0.95, 0.85, 0.7, 0.3)] == [3, 5, 8, 10]
    assert [slot_width(1, 0.5, c) for c in range(4)] == [2, 4, 6, 4]
    assert slot_width(2, 0.96, 2) == 2 and slot_width(2, 0.9, 2) == 3 and slot_width(3, 0.9, 0) == 2


def test_eagle3_budget_rescaling():
    assert scaled_shape(59) == (10, 7)
    assert scaled_shape(12) == (2, 6)


@torch.no_grad()
def _drafting_state_from_scratch(net, features: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Block-1 pre-norm hiddens at the last position, computed over the whole sequence at once."""
    n = len(tokens)
    k = net.cfg.block_size
    out = net.blocks(features[None], torch.tensor(tokens)[None], torch.arange(n)[None], block_mask(n, k)[None])
    return out.hidden[0, -1]


def test_specblock_incremental_cache_equals_full_recompute(tiny_llama):
    """After several iterations the drafter's cached block 1 equals one forward over all
    committed positions with the training pairing (feature h_i with token x_{i+1})."""
    model = Transformer.load(tiny_llama)
    net = random_specblock(model, seed=3)
    drafter = SpecBlockDrafter(net)
    captured = []
    original = drafter._block_one

    def spy():
        hidden, heads = original()
        captured.append(hidden.clone())
        return hidden, heads

    drafter._block_one = spy
    prompt = prompts(1, seed=5)[0]
    out, _ = run_decode(model, drafter, prompt, max_new_tokens=20, node_budget=8)
    # recompute: features of prompt + generated tokens from one plain target forward
    seq = prompt + out
    cache = model.new_cache(len(seq))
    feats = model.forward(torch.tensor(seq), torch.arange(len(seq)), cache, 0, capture=True).features.float()
    # the last drafting position is the last committed token before the final root
    assert len(captured) >= 3
    committed = drafter.positions  # positions in the drafter cache after the last block 1
    full = _drafting_state_from_scratch(net, feats[:committed], seq[1 : committed + 1])
    assert torch.allclose(captured[-1], full, atol=1e-4)


@torch.no_grad()
def test_eagle3_first_forward_matches_training_step_zero(tiny_llama):
    model = Transformer.load(tiny_llama)
    net = random_eagle3(model, seed=4)
    drafter = Eagle3Drafter(net)
    prompt = prompts(1, seed=6)[0]
    cache = model.new_cache(len(prompt))
    feats = model.forward(torch.tensor(prompt), torch.arange(len(prompt)), cache, 0, capture=True).features.float()
    drafter.begin(PrefillFeedback(prompt, feats, first_token=9, max_length=64))
    tree = drafter.propose(prompt + [9], 59)
    n = len(prompt)
    tokens = torch.tensor(prompt[1:] + [9])[None]
    out, _ = net.step(feats[None], tokens, torch.arange(1, n + 1)[None], torch.ones(n, n, dtype=torch.bool).tril()[None])
    logp = torch.log_softmax(net.logits(out[0, -1]), -1)
    best = int(logp.argmax())
    assert tree.tokens[0] == best + int(net.d2t[best])  # the best root child comes first
    assert len(tree) == 59 and max(tree.depths()) <= 8


def test_specblock_ablation_drafting_one_block_and_fixed_topk(tiny_llama):
    """M = 1 drafts with one forward per iteration; both ablations keep the output exact."""
    model = Transformer.load(tiny_llama)
    prompt = prompts(1, seed=12)[0]
    want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=30)
    one_block = SpecBlockDrafter(random_specblock(model), blocks=1)
    got, stats = run_decode(model, one_block, prompt, max_new_tokens=30, node_budget=59)
    assert got == want
    drafted = sum(1 for n in stats.tree_sizes if n > 0)  # the last iteration may draft nothing
    assert one_block.forwards == drafted and max(stats.tree_sizes) <= 28  # block 1 alone: 10 + 3 x 6
    fixed = SpecBlockDrafter(random_specblock(model), fixed_topk=4)
    got, _ = run_decode(model, fixed, prompt, max_new_tokens=30, node_budget=59)
    assert got == want


def test_specblock_skips_block_two_when_the_budget_fits_block_one(tiny_llama):
    """Up to K nodes SpecBlock drafts with one forward per iteration, above K with two; exact either way."""
    model = Transformer.load(tiny_llama)
    prompt = prompts(1, seed=13)[0]
    want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=30)
    for budget, per_iteration in ((4, 1), (5, 2)):
        drafter = SpecBlockDrafter(random_specblock(model))
        assert drafter.k == 4
        got, stats = run_decode(model, drafter, prompt, max_new_tokens=30, node_budget=budget)
        assert got == want
        drafted = sum(1 for n in stats.tree_sizes if n > 0)
        assert drafter.forwards <= per_iteration * drafted and drafter.forwards > (per_iteration - 1) * drafted


def _started_drafters(model, base, prompts_):
    from specblock.target.runner import TargetRunner

    out = []
    for p in prompts_:
        runner = TargetRunner(model)
        pre = runner.prefill(p, 128, capture=True)
        drafter = base.fork()
        drafter.begin(PrefillFeedback(p, pre.features, 3, 128))
        out.append(drafter)
    return out


def test_specblock_batched_block_one_gives_each_request_its_own_tree(tiny_llama):
    """One block-1 forward for several requests (the server's batch): each request's tree is the
    one it drafts alone, and its cache and positions advance as alone. A request's first pass
    (its prompt) runs alone through the causal kernel; the later ones share one forward."""
    model = Transformer.load(tiny_llama)
    base = SpecBlockDrafter(random_specblock(model))
    prompts_ = [[5, 6, 7, 8, 9] * 3, [10, 11, 12] * 2, [20, 21, 22, 23, 24, 25, 26]]
    budgets = [4, 6, 59]
    alone = _started_drafters(model, base, prompts_)
    together = _started_drafters(model, base, prompts_)
    calls = []
    real_blocks = base.model.blocks
    base.model.blocks = lambda *a, **kw: calls.append(kw.get("caches") is not None) or real_blocks(*a, **kw)
    try:
        torch.manual_seed(11)
        for round_ in range(3):
            if round_ == 2:  # a new request joins the established ones: its first pass runs alone
                for group in (alone, together):
                    group += _started_drafters(model, base, [[30, 31, 32, 33] * 2])
                budgets.append(16)
            want = [d.propose([], b) for d, b in zip(alone, budgets)]
            calls.clear()
            got = SpecBlockDrafter.propose_batch(together, budgets)
            assert [(t.tokens, t.parents) for t in got] == [(t.tokens, t.parents) for t in want]
            assert all(len(t) > 0 for t in got)
            if round_ == 0:
                assert not any(calls)  # every first pass alone
            else:
                assert calls[0] and calls.count(True) == 1  # one batched block 1; block 2 per request where it runs
            for a, t in zip(alone, together):  # the same accepted positions for both copies
                feedback = VerifyFeedback(tokens=[3, 4], start_position=0, features=torch.randn(2, 3 * model.cfg.hidden_size),
                                          logits=torch.zeros(2, 1), next_token=5, accepted_nodes=[0], rejected_node=None)  # fmt: skip
                a.observe(feedback)
                t.observe(feedback)
    finally:
        base.model.blocks = real_blocks
    assert [d.cache.length for d in together] == [d.cache.length for d in alone]
    assert [d.positions for d in together] == [d.positions for d in alone]
    assert [d.forwards for d in together] == [d.forwards for d in alone]


def test_causal_stands_for_the_explicit_first_pass_masks(tiny_llama):
    """`CAUSAL` (SDPA's fused causal kernel) computes what the explicit masks it replaces do:
    SpecBlock's block rule with nothing before (in training, and in drafting where the keys go
    to the cache) and EAGLE-3's step 0; it refuses a call with keys before its own rows."""
    model = Transformer.load(tiny_llama)
    torch.manual_seed(7)
    n = 11
    spec = random_specblock(model, seed=5)
    k = spec.cfg.block_size
    feats = torch.randn(1, n, 3 * model.cfg.hidden_size)
    tokens = torch.randint(0, 90, (1, n))
    positions = torch.arange(n)[None]
    explicit = spec.blocks(feats, tokens, positions, block_mask(n, k)[None])
    causal = spec.blocks(feats, tokens, positions, CAUSAL)
    assert torch.allclose(causal.hidden, explicit.hidden, atol=1e-5)
    with torch.inference_mode():  # drafting: keys written into a cache, attended from there
        cache = KVCache(spec.cfg.num_hidden_layers, spec.cfg.num_key_value_heads, spec.cfg.head_dim, n * k, torch.float32, "cpu")
        drafted = spec.blocks(feats, tokens, positions, CAUSAL, cache=cache, cache_start=0)
    assert torch.allclose(drafted.hidden, explicit.hidden, rtol=1e-4, atol=1e-4)  # fused inference weights
    eagle = random_eagle3(model, seed=6)
    want, _ = eagle.step(feats, tokens, positions + 1, ttt_mask(n, 0)[None])
    got, _ = eagle.step(feats, tokens, positions + 1, CAUSAL)
    assert torch.allclose(got, want, atol=1e-5)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="own 3 rows"):
        attend(q, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), CAUSAL)
