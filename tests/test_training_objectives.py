"""The training objectives against independent, loop-by-loop oracles written from design §5,
and drafting-time block 2 against training-time block 2.

The oracles share only the network with the code under test (`model.blocks`, `model.logits`,
`model.rank_logits`): every mask, offset, target, valid-prefix chain and rank class is rebuilt
here with plain loops. `scripts/mutation_check.sh` breaks those pieces one at a time and
checks that this file fails for each.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from neural_helpers import random_eagle3, random_specblock, tiny_vocab
from specblock.drafters.base import PrefillFeedback
from specblock.drafters.scored_tree import ROOT, CandidatePool
from specblock.drafters.specblock import SpecBlockDrafter
from specblock.target.transformer import Transformer
from specblock.training.dataset import Sequence, collate
from specblock.training.eagle3_loss import eagle3_loss
from specblock.training.specblock_loss import rank_loss, specblock_loss

K = 4


def _block_one_by_loops(model, features, tokens):
    """Block 1 at every position: condition h_i, token x_{i+1}, mask built cell by cell."""
    b, p = tokens.shape
    nxt = torch.stack([tokens[:, min(i + 1, p - 1)] for i in range(p)], dim=1)
    mask = torch.zeros(p * K, p * K, dtype=torch.bool)
    for r in range(p * K):
        for c in range(p * K):
            mask[r, c] = c // K < r // K or (c // K == r // K and c % K <= r % K)
    return model.blocks(features, nxt, torch.arange(p)[None], mask[None])


def _block_two_by_loops(model, tokens, first, s, own_earlier=True):
    """Block 2 after offset s: condition = block 1's slot s-1 hidden, token x_{i+1+s}; keys =
    block 1 at positions < i (all slots) and at i (slots < s), then its own block's rule
    (without its earlier positions when not `own_earlier`: what drafting sees)."""
    b, p = tokens.shape
    cond = first.hidden[:, :, s - 1]
    toks = torch.stack([tokens[:, min(i + 1 + s, p - 1)] for i in range(p)], dim=1)
    mask = torch.zeros(p * K, 2 * p * K, dtype=torch.bool)
    for r in range(p * K):
        i, k = divmod(r, K)
        for c in range(p * K):
            ci, ck = divmod(c, K)
            mask[r, c] = ci < i or (ci == i and ck < s)
            mask[r, p * K + c] = (ci < i and own_earlier) or (ci == i and ck <= k)
    return model.blocks(cond, toks, torch.arange(p)[None], mask[None], past=first.kv, inherited=True)


def _target_id(model, draft_id: int) -> int:
    return draft_id + int(model.d2t[draft_id])


def _rank_class(rank: float) -> int:
    return 0 if rank == 1 else 1 if rank <= 4 else 2 if rank <= 10 else 3


def _block_loss_by_loops(model, batch, out, offset, valid_floor=0.0):
    """Draft loss (valid-prefix means, 0.8^k) and rank loss of one block, cell by cell.
    `valid_floor`: slot k's sum is divided by max(valid cells, valid_floor x trainable cells)."""
    logits = model.logits(out.hidden).float().detach()  # a hand computation: plain numbers, no graph
    rank_logits = model.rank_logits(out.hidden, logits).float().detach()
    b, p = batch.tokens.shape
    cells = {}
    for bi in range(b):
        for i in range(p):
            chain_ok = chain_lm = True  # valid prefix (ok) and rank chain (loss mask) so far
            for k in range(K):
                j = i + 1 + offset + k
                inside = j <= p - 1
                ok = inside and bool(batch.ok[bi, j])
                lm = inside and bool(batch.loss_mask[bi, j])
                row = logits[bi, i, k]
                correct = inside and _target_id(model, int(row.argmax())) == int(batch.target_argmax[bi, j])
                v, r = chain_ok and ok, chain_lm and lm
                cells[bi, i, k] = (v, r, j if inside else None, correct, ok)
                chain_ok, chain_lm = v and correct, r and correct
    draft = 0.0
    for k in range(K):
        terms = []
        for (bi, i, kk), (v, _, j, _, _) in cells.items():
            if kk != k or not v:
                continue
            logp = F.log_softmax(logits[bi, i, k], dim=-1)
            ce = -sum(
                float(pr) * float(logp[d]) for d, pr in zip(batch.draft_ids[bi, j], batch.draft_probs[bi, j]) if d >= 0
            )
            terms.append(ce)
        trainable = sum(1 for (_, _, kk), cell in cells.items() if kk == k and cell[4])
        draft += 0.8**k * (sum(terms) / max(1, len(terms), valid_floor * trainable))
    masked = [(key, cell) for key, cell in cells.items() if cell[1]]
    classes = {}
    for (bi, i, k), (_, _, j, _, _) in masked:
        target = int(batch.draft_ids[bi, j, 0])
        rank = math.inf if target < 0 else 1 + int((logits[bi, i, k] > logits[bi, i, k, target]).sum())
        classes[bi, i, k] = _rank_class(rank)
    counts = {
        (k, c): sum(1 for (_, _, kk), cc in classes.items() if kk == k and cc == c) for k in range(K) for c in range(4)
    }
    total = 0.0
    for (bi, i, k), t in classes.items():
        raw = [1 / (1 + abs(c - t) + max(t - c, 0)) ** 2 for c in range(4)]
        labels = [w / sum(raw) for w in raw]
        logp = F.log_softmax(rank_logits[bi, i, k], dim=-1)
        ce = -sum(lab * float(lp) for lab, lp in zip(labels, logp))
        pred = int(rank_logits[bi, i, k].argmax())
        distance = 1 + abs(t - pred) + max(t - pred, 0)
        total += ce * distance * min(1.0, 10 / counts[k, t])
    stats = {"valid": [sum(1 for (_, _, kk), c in cells.items() if kk == k and c[0]) for k in range(K)],
             "classes": set(classes.values())}  # fmt: skip
    return draft, total / max(1, len(classes)), logits, stats


def _batch(target, model, seed=0, b=2, p=9):
    """Random sequences whose targets agree with the drafter's block-1 slot-0 guess at about
    half of the positions, so valid-prefix chains of every length occur."""
    gen = torch.Generator().manual_seed(seed)
    vocab = tiny_vocab(target)
    width = 3 * target.cfg.hidden_size
    features = torch.randn(b, p, width, generator=gen)
    tokens = torch.randint(3, 60, (b, p), generator=gen)
    with torch.no_grad():
        guess = model.logits(_block_one_by_loops(model, features, tokens).hidden).argmax(-1)  # [B, P, K]
    seqs = []
    for bi in range(b):
        topk = torch.stack([torch.randperm(target.cfg.vocab_size, generator=gen)[:20] for _ in range(p)])
        for j in range(1, p):
            if torch.rand((), generator=gen) < 0.55:
                want = _target_id(model, int(guess[bi, j - 1, 0]))
                rest = topk[j][topk[j] != want][:19]
                topk[j] = torch.cat([torch.tensor([want]), rest])
        logprobs = torch.sort(torch.randn(p, 20, generator=gen) * 2, dim=-1, descending=True).values.log_softmax(-1)
        answer = torch.tensor([0, 0] + [1] * (p - 2), dtype=torch.bool)
        seqs.append(Sequence(tokens[bi], answer, features[bi].half(), topk, logprobs.half()))
    batch = collate(seqs, vocab)
    assert 0 < int(batch.ok.sum()) < batch.ok.numel()  # some targets fall outside the draft vocabulary
    return batch


@pytest.fixture
def target(tiny_llama):
    return Transformer.load(tiny_llama)


@pytest.mark.parametrize(("seed", "valid_floor"), [(0, 0.0), (1, 0.0), (2, 0.0), (0, 0.75), (1, 1.0)])
def test_specblock_loss_equals_the_design_computed_cell_by_cell(target, seed, valid_floor):
    model = random_specblock(target, seed=seed)
    batch = _batch(target, model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        report = specblock_loss(model, batch, gen, blocks=2, keep_outputs=True, valid_floor=valid_floor)
        (s,) = report.offsets
        first = _block_one_by_loops(model, batch.features, batch.tokens)
        draft1, rank1, logits1, stats1 = _block_loss_by_loops(model, batch, first, 0, valid_floor)
        second = _block_two_by_loops(model, batch.tokens, first, s)
        draft2, rank2, logits2, stats2 = _block_loss_by_loops(model, batch, second, s, valid_floor)
    torch.testing.assert_close(report.block_logits[0], logits1, atol=1e-5, rtol=0)
    torch.testing.assert_close(report.block_logits[1], logits2, atol=1e-5, rtol=0)
    assert report.draft_loss == pytest.approx(draft1 + draft2, rel=1e-5)
    if valid_floor > 0:  # the floor binds somewhere in these data: it changes the loss
        plain = _block_loss_by_loops(model, batch, first, 0)[0] + _block_loss_by_loops(model, batch, second, s)[0]
        assert report.draft_loss != pytest.approx(plain, rel=1e-3)
    assert report.rank_loss == pytest.approx(rank1 + rank2, rel=1e-5)
    assert float(report.loss) == pytest.approx(draft1 + draft2 + rank1 + rank2, rel=1e-5)
    # the data exercise every part: valid-prefix chains stop at different slots, several rank classes
    assert stats1["valid"][0] > stats1["valid"][1] > 0 and len(stats1["classes"] | stats2["classes"]) >= 2


def test_rank_loss_of_one_row_by_hand():
    # one slot, true class 2, logits favour class 0 (predicted 0): under-estimate by 2 -> weight 1+2+2 = 5
    logits = torch.tensor([[[2.0, 0.0, 1.0, -1.0]]])
    raw = [1 / 25, 1 / 9, 1, 1 / 4]  # 1/(1+|c-2|+max(2-c,0))^2 for c = 0..3
    labels = [w / sum(raw) for w in raw]
    logp = torch.log_softmax(logits[0, 0], -1).tolist()
    expected = -sum(lab * lp for lab, lp in zip(labels, logp)) * 5 * 1.0
    got = rank_loss(logits, torch.tensor([[2]]), torch.tensor([[True]]))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # over-estimating (true 0, predicted 2) costs 1+2 = 3; 11 rows of the class weigh 10/11 each
    many = logits.expand(1, 11, 4).reshape(11, 1, 4)[..., [1, 0, 2, 3]] * torch.tensor([1.0, 1, 3, 1])
    raw0 = [1, 1 / 4, 1 / 9, 1 / 16]
    lab0 = [w / sum(raw0) for w in raw0]
    lp = torch.log_softmax(many[0, 0], -1).tolist()
    assert int(many[0, 0].argmax()) == 2
    expected0 = -sum(a * b for a, b in zip(lab0, lp)) * 3 * (10 / 11)
    got0 = rank_loss(many, torch.zeros(11, 1, dtype=torch.long), torch.ones(11, 1, dtype=torch.bool))
    assert float(got0) == pytest.approx(expected0, rel=1e-6)


def test_eagle3_loss_equals_the_design_computed_step_by_step(target):
    model = random_eagle3(target)
    batch = _batch(target, random_specblock(target), seed=5)
    b, p = batch.tokens.shape
    steps = 3
    with torch.no_grad():
        report = eagle3_loss(model, batch, steps=steps, keep_outputs=True)
        hidden, fused, past, expected = batch.features, False, None, 0.0
        for s in range(steps):
            toks = torch.stack([batch.tokens[:, min(i + 1 + s, p - 1)] for i in range(p)], dim=1)
            mask = torch.zeros(p, p * (s + 1), dtype=torch.bool)
            for i in range(p):
                mask[i, : i + 1] = True  # step 0's keys at positions <= i
                for e in range(1, s + 1):
                    mask[i, e * p + i] = True  # each later step's key at i only
            out, kv = model.step(hidden, toks, torch.arange(p)[None] + 1 + s, mask[None], past, fused=fused)
            logits = model.logits(out).float()
            terms = []
            for bi in range(b):
                for i in range(p):
                    j = i + 1 + s
                    if j > p - 1 or not batch.ok[bi, j]:
                        continue
                    logp = F.log_softmax(logits[bi, i], -1)
                    terms.append(
                        -sum(
                            float(pr) * float(logp[d])
                            for d, pr in zip(batch.draft_ids[bi, j], batch.draft_probs[bi, j])
                            if d >= 0
                        )
                    )
            expected += 0.8**s * sum(terms) / max(1, len(terms))
            torch.testing.assert_close(report.logits[:, :, s], logits, atol=1e-5, rtol=0)
            hidden, fused = out, True
            past = kv if past is None else (torch.cat([past[0], kv[0]], 2), torch.cat([past[1], kv[1]], 2))
    assert float(report.loss) == pytest.approx(expected, rel=1e-5)


def _drafted_blocks(model, batch, i, seed_token, s):
    """Drafting with the context up to position i (features h_0..h_i, the root x_{i+1}): block 1's
    hiddens at the drafting position, and block 2's for one seed of `seed_token` at slot s-1,
    both [K, H], through the drafter's own `_block_one` / `_block_two`."""
    drafter = SpecBlockDrafter(model)
    prompt = batch.tokens[0, : i + 1].tolist()
    drafter.begin(PrefillFeedback(prompt, batch.features[0, : i + 1], int(batch.tokens[0, i + 1]), max_length=32))
    seen = []
    real_heads = drafter._heads
    drafter._heads = lambda hidden: seen.append(hidden.clone()) or real_heads(hidden)
    with torch.inference_mode():
        hidden, _ = drafter._block_one()
        pool = CandidatePool()
        drafter._block_two(pool, [(pool.add(seed_token, ROOT, 0.0), s - 1)], hidden)
    return hidden, seen[-1][0]


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_drafting_block_two_equals_training_block_two(target, s):
    """At the first position (where training's own-block keys of earlier positions do not
    exist) the whole training path, `specblock_loss`, gives block 2 the logits that drafting's
    block 2 computes for the seed at slot s-1 with the token training uses."""
    model = random_specblock(target, seed=3)
    batch = _batch(target, model, seed=3, b=1, p=K + 3)
    draws = {n: int(torch.randint(1, K + 1, (1,), generator=torch.Generator().manual_seed(n))) for n in range(64)}
    seed = next(n for n, drawn in draws.items() if drawn == s)  # a generator whose first offset is s
    with torch.no_grad():
        report = specblock_loss(model, batch, torch.Generator().manual_seed(seed), blocks=2, keep_outputs=True)
    assert report.offsets == [s]
    hidden, seeded = _drafted_blocks(model, batch, 0, int(batch.tokens[0, 1 + s]), s)  # token x_{i+1+s}
    torch.testing.assert_close(model.logits(hidden.float()), report.block_logits[0][0, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(model.logits(seeded.float()), report.block_logits[1][0, 0], atol=1e-4, rtol=0)


def test_drafting_block_two_equals_training_block_two_later_in_the_context(target):
    """Further in, training's block 2 also sees its own block at earlier positions (design §5:
    'this last part has no counterpart when drafting'). With those keys masked out, the rest of
    the training construction gives drafting's logits at the last position."""
    model = random_specblock(target, seed=4)
    p, s = 6, 2
    batch = _batch(target, model, seed=4, b=1, p=p)
    with torch.no_grad():
        first = _block_one_by_loops(model, batch.features, batch.tokens)
        second = _block_two_by_loops(model, batch.tokens, first, s, own_earlier=False)
    i = p - 2  # the drafting position pairs h_i with x_{i+1}; its block 2 seed takes x_{i+1+s}
    hidden, seeded = _drafted_blocks(model, batch, i, int(batch.tokens[0, min(i + 1 + s, p - 1)]), s)
    torch.testing.assert_close(hidden.float(), first.hidden[0, i], atol=1e-4, rtol=0)
    torch.testing.assert_close(model.logits(seeded.float()), model.logits(second.hidden[0, i]), atol=1e-4, rtol=0)
