"""SpecBlock drafting (design §6): two drafter forwards per iteration build the tree.

1. Block 1 runs every position the target accepted since the last iteration (all K slots
   each, cached for good) and the drafting position: the target feature of the last accepted
   token paired with the bonus token. Its K greedy tokens form the main chain; the rank head
   decides how many alternatives hang off each chain node.
2. Every alternative, every chain node that branched and the chain end seed a new block
   (condition = that slot's pre-norm hidden, token = the node's token, seeing block 1 up to
   that slot); all seeds run as ONE batched forward, block 2, whose slots branch by the same
   rules. Two cuts save drafter time (`block_two_seeds`; the design runs every seed):
   - seeds outside the budget's best block-1 nodes are skipped: their own descendants score
     lower than they do, so they could only matter by merging into (and lifting) an existing
     node, which is rare;
   - at most budget // K seeds run, the best by score, so block 2 computes at most as many
     rows as the tree has nodes. Measured with the smollm2 drafter on 12 Spec-Bench prompts:
     at 16 nodes the seeds ranked below 8 supplied 4% of block 2's kept nodes, and 4 seeds
     instead of all 16 gave tau 1.940 against 1.942; at 32 nodes 8 seeds instead of 21 gave
     2.038 against 2.041 (no block 2 at all: 1.832 at 16 nodes).
   At a budget of at most K nodes block 2 does not run at all (one forward per iteration).
3. Duplicates (same parent and token) merge; the `budget` best nodes by cumulative
   log-probability are kept (ancestors included, never over the budget).
"""

from __future__ import annotations

import math

import torch

from specblock.drafters.base import Drafter, PendingPositions, PrefillFeedback, VerifyFeedback
from specblock.drafters.scored_tree import ROOT, CandidatePool
from specblock.drafters.specblock_model import SpecBlockModel, block_mask
from specblock.target.kv_cache import KVCache
from specblock.target.primitives import CAUSAL, Causal
from specblock.tree import DraftTree

RANK_TOPK = (2, 4, 6, 4)  # alternatives + greedy per rank class at slots k >= 1 (authors' default)


def slot_width(slot: int, top1_prob: float, rank_cls: int, slot0_topk: int = 10, fixed: int | None = None) -> int:
    """How many tokens (greedy included) a slot contributes (design §6 step 2); `fixed`
    replaces the rank-class table at slots k >= 1."""
    if slot == 0:
        if top1_prob >= 0.9:
            return min(slot0_topk, 3)
        if top1_prob >= 0.8:
            return min(slot0_topk, 5)
        if top1_prob >= 0.6:
            return min(slot0_topk, 8)
        return slot0_topk
    width = fixed if fixed else RANK_TOPK[rank_cls]
    if top1_prob >= 0.95:
        return min(width, 2)
    if top1_prob >= 0.85:
        return min(width, 3)
    return width


def block_two_seeds(
    pool: CandidatePool, seeds: list[tuple[int, int]], budget: int, k: int, cap: int | None = None
) -> list[tuple[int, int]]:  # fmt: skip
    """The seeds (node, slot) block 2 runs at `budget`: those among the budget's best block-1
    nodes, at most `cap` (default budget // k) of them, the best scores first (ties keep
    growth order), returned in growth order (module docstring, step 2)."""
    reachable = set(pool.best(budget))
    chosen = [seed for seed in seeds if seed[0] in reachable]
    cap = max(1, budget // k) if cap is None else cap
    if len(chosen) > cap:
        kept = set(sorted(chosen, key=lambda seed: -pool.scores[seed[0]])[:cap])
        chosen = [seed for seed in chosen if seed in kept]
    return chosen


class SpecBlockDrafter(Drafter):
    name = "specblock"
    needs_features = True

    def __init__(self, model: SpecBlockModel, fixed_topk: int | None = None, blocks: int = 2) -> None:
        """The ablations of design §9: `fixed_topk` replaces the rank head by a fixed width at
        slots k >= 1 (the top-1 probability caps and the slot-0 rule still apply); `blocks=1`
        drafts without inheritance (block 1 only, M = 1).

        The drafter computes in the dtype and on the device of the features it receives (the
        target's); its cache lives there too and is allocated once per request."""
        super().__init__()
        if blocks not in (1, 2):
            raise ValueError("SpecBlock drafts with 1 or 2 blocks per iteration")
        self.model = model.eval()
        self.k = model.cfg.block_size
        self.fixed_topk = fixed_topk
        self.blocks = blocks
        self.max_width = max(10, fixed_topk or 0, *RANK_TOPK)
        self.max_seeds = 10 + (self.k - 1) * self.max_width  # block-1 nodes that can seed block 2
        self.cache: KVCache | None = None
        self.positions = 0  # context positions whose K slots sit in the cache
        self.pending = PendingPositions()
        self._masks: dict[tuple[str, int], torch.Tensor] = {}

    # -- state --------------------------------------------------------------------------
    def fork(self) -> "SpecBlockDrafter":
        twin = SpecBlockDrafter(self.model, self.fixed_topk, self.blocks)
        twin.calibration, twin.source_dir = getattr(self, "calibration", None), getattr(self, "source_dir", None)
        return twin

    def begin(self, prefill: PrefillFeedback) -> None:
        c = self.model.cfg
        rows = (prefill.max_length + 2 + self.max_seeds) * self.k
        dtype, device = prefill.features.dtype, prefill.features.device
        cache = self.cache
        if cache is None or cache.capacity < rows or cache.keys.dtype != dtype or cache.keys.device != device:
            self.cache = KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, rows, dtype, device)
            self._masks.clear()  # they live on the cache's device
        self.cache.length = 0
        self.positions = 0
        self.pending.start(prefill)

    def observe(self, feedback: VerifyFeedback) -> None:
        self.pending.extend(feedback)

    # -- drafting ---------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        if budget <= 0 or not self.pending:
            return DraftTree()
        hidden, heads = self._block_one()
        return self._tree(hidden, heads, budget)

    @classmethod
    @torch.inference_mode()
    def propose_batch(cls, drafters: list["SpecBlockDrafter"], budgets: list[int]) -> list[DraftTree]:
        """The trees of several requests (one drafter each, forks of one) with ONE block-1
        forward: every request's pending positions one after another, each attending to its own
        cache only (a block-diagonal mask). Growth and block 2 stay per request. A request's
        first pass (its prompt) runs alone, through the causal kernel."""
        active = [i for i, (d, b) in enumerate(zip(drafters, budgets)) if b > 0 and d.pending and d.cache.length]
        if len(active) < 2:
            return [d.propose([], b) for d, b in zip(drafters, budgets)]
        first = drafters[active[0]]
        if any(drafters[i].model is not first.model or drafters[i].fixed_topk != first.fixed_topk for i in active):
            raise ValueError("a batched proposal needs forks of one drafter")
        inputs = [drafters[i]._block_one_inputs() for i in active]
        conditions, tokens, positions, masks, parts = (list(column) for column in zip(*inputs))
        mask = torch.block_diag(*(m[0] for m in masks))[None]  # each request's rows see its own cache and block only
        out = first.model.blocks(torch.cat(conditions, 1), torch.cat(tokens, 1), torch.cat(positions, 1), mask,
                                 caches=parts)  # fmt: skip
        last = torch.tensor([rows // first.k for _, _, rows in parts]).cumsum(0) - 1  # each drafting position
        hidden = out.hidden[0, last.to(out.hidden.device)]  # [R, K, H]
        heads = first._heads(hidden)
        # the others alone: an empty tree where there is nothing to draft, else a first pass
        trees = [DraftTree() if i in active else d.propose([], b) for i, (d, b) in enumerate(zip(drafters, budgets))]
        for j, (i, part) in enumerate(zip(active, parts)):
            drafters[i]._block_one_done(part)
            trees[i] = drafters[i]._tree(hidden[j], tuple(None if h is None else h[j] for h in heads), budgets[i])
        return trees

    def _tree(self, hidden: torch.Tensor, heads: tuple, budget: int) -> DraftTree:
        """The tree from block 1's drafting position (hiddens [K, H] and their `_heads`)."""
        pool = CandidatePool()
        seeds = self._grow(pool, [ROOT], *(None if h is None else h[None] for h in heads))
        if self.blocks == 2 and budget > self.k:
            # at budgets up to K a whole tree fits block 1's chain and alternatives: block 2 would
            # cost a forward for nodes that rarely make the cut (same tau measured at 4 nodes,
            # half the drafting time: benchmarks/results/engine_zen5/specblock_one_block)
            seeds = block_two_seeds(pool, seeds, budget, self.k)
            if seeds:
                self._block_two(pool, seeds, hidden)
        return pool.to_tree(budget)

    def _mask(self, kind: str, size: int) -> torch.Tensor:
        """Block-shaped masks, built once per size: 'block' = block_mask(size, K); 'seeds' = the
        block-1 rule inside each of `size` seeds, nothing across seeds."""
        key = (kind, size)
        if key not in self._masks:
            k = self.k
            mask = block_mask(size, k)
            if kind == "seeds":
                rows = torch.arange(size * k)
                mask = block_mask(1, k).repeat(size, size) & (rows[:, None] // k == rows[None, :] // k)
            self._masks[key] = mask.to(self.cache.keys.device)
        return self._masks[key]

    def _block_one(self) -> tuple[torch.Tensor, tuple]:
        """Run the pending positions; cache all their slots; return the drafting position's
        pre-norm hiddens [K, H] and its slots' `_heads`."""
        cond, tokens, positions, mask, part = self._block_one_inputs()
        out = self.model.blocks(cond, tokens, positions, mask, cache=self.cache, cache_start=part[1])
        self._block_one_done(part)
        hidden = out.hidden[0, -1]
        return hidden, self._heads(hidden)

    def _block_one_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | Causal, tuple]:
        """Take the pending positions for block 1: condition [1, n, F], tokens [1, n], positions
        [1, n], the mask of their n*K rows [1, n*K, cached + n*K] (the whole cache, then the block
        rule; `CAUSAL` for the first pass, when nothing is cached: the block rule alone is causal
        over the rows) and where they go: (cache, cached, n*K)."""
        k, n, cached = self.k, len(self.pending), self.cache.length
        cond, tokens = self.pending.take(self.cache.keys.dtype)
        device = cond.device
        positions = torch.arange(self.positions, self.positions + n, device=device)[None]
        mask = CAUSAL
        if cached:
            mask = torch.cat([torch.ones(n * k, cached, dtype=torch.bool, device=device), self._mask("block", n)], dim=1)[None]
        return cond, tokens, positions, mask, (self.cache, cached, n * k)

    def _block_one_done(self, part: tuple) -> None:
        """The positions block 1 just ran stay cached for good."""
        _, cached, rows = part
        self.cache.length = cached + rows
        self.positions += rows // self.k
        self.forwards += 1

    def _heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per slot of `hidden` [..., H]: the `max_width` best draft ids and their log-probs, and
        the rank class (None when the fixed-width ablation ignores the rank head). One top-k
        and one logsumexp serve the tree and the rank head's features."""
        logits = self.model.logits(hidden).float()
        top = logits.topk(min(max(self.max_width, 20), logits.shape[-1]), dim=-1)
        vocab_lse = logits.logsumexp(-1, keepdim=True)
        ranks = None
        if not self.fixed_topk:
            ranks = self.model.rank_logits(hidden, logits, top.values[..., :20], vocab_lse).argmax(-1)
        w = self.max_width
        return top.indices[..., :w], top.values[..., :w] - vocab_lse, ranks

    def _grow(
        self, pool: CandidatePool, parents: list[int], top_ids: torch.Tensor, top_logp: torch.Tensor,
        ranks: torch.Tensor | None,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """Add each block's chain and alternatives under its parent node (block b of the heads
        [B, K, W] hangs under parents[b]); return the seeds (node, slot) that inherit:
        alternatives, chain nodes that branched, the chain end. Blocks grow in order, each from
        its parent's score at that moment (an earlier block may have merged into that parent).

        One transfer to the host for all slots of all blocks; the per-slot widths are then
        plain Python on small lists."""
        ids = top_ids + self.model.d2t[top_ids]
        rank = torch.zeros_like(ids[..., :1]) if ranks is None else ranks[..., None]
        packed = torch.cat([top_logp.double(), ids.double(), rank.double()], dim=-1).cpu().tolist()
        w = ids.shape[-1]  # max_width, or the whole vocabulary of a tiny test drafter
        seeds: list[tuple[int, int]] = []
        for parent, block in zip(parents, packed):
            score = 0.0 if parent == ROOT else pool.scores[parent]
            chain_parent = parent
            for slot, row in enumerate(block):
                vals, toks = row[:w], row[w : 2 * w]
                width = slot_width(slot, math.exp(vals[0]), int(row[-1]), fixed=self.fixed_topk)
                chain_node = pool.add(int(toks[0]), chain_parent, score + vals[0])
                for tok, val in zip(toks[1:width], vals[1:width]):
                    seeds.append((pool.add(int(tok), chain_parent, score + val), slot))
                if width > 1 or slot == self.k - 1:
                    seeds.append((chain_node, slot))
                score += vals[0]
                chain_parent = chain_node
        return seeds

    def _block_two(self, pool: CandidatePool, seeds: list[tuple[int, int]], hidden: torch.Tensor) -> None:
        """One batched forward over every seed; its slots branch under the seed node. The
        seeds' keys/values go to the cache after the context, where the next block 1 overwrites them."""
        k = self.k
        s = len(seeds)
        cached = self.cache.length
        device = hidden.device
        slots = torch.tensor([slot for _, slot in seeds], device=device)
        cond = hidden[slots][None]  # [1, S, H] inherited pre-norm hiddens
        tokens = torch.tensor([pool.tokens[node] for node, _ in seeds], device=device)[None]
        # the drafting position's K slots are the cache's last K rows: a seed from slot j sees 0..j
        seen = torch.ones(s * k, cached, dtype=torch.bool, device=device)
        last = torch.arange(k, device=device)
        seen[:, cached - k :] = last[None, :] <= slots.repeat_interleave(k)[:, None]
        mask = torch.cat([seen, self._mask("seeds", s)], dim=1)[None]
        positions = torch.full((1, s), self.positions - 1, device=device)
        out = self.model.blocks(cond, tokens, positions, mask, inherited=True, cache=self.cache, cache_start=cached)
        self.forwards += 1
        self._grow(pool, [node for node, _ in seeds], *self._heads(out.hidden[0]))  # hiddens [S, K, H]
