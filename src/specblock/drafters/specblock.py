"""SpecBlock drafting (design §6): two drafter forwards per iteration build the tree.

1. Block 1 runs every position the target accepted since the last iteration (all K slots
   each, cached for good) and the drafting position: the target feature of the last accepted
   token paired with the bonus token. Its K greedy tokens form the main chain; the rank head
   decides how many alternatives hang off each chain node.
2. Every alternative, every chain node that branched and the chain end seed a new block
   (condition = that slot's pre-norm hidden, token = the node's token, seeing block 1 up to
   that slot); all seeds run as ONE batched forward, block 2, whose slots branch by the same
   rules. Block 1 yields at most 25 nodes, so at the parity budget (59) every seed runs.
   At the small budgets a CPU wants, seeds outside the budget's best block-1 nodes are
   skipped to save drafter time: their own descendants score lower than they do, so they
   could only matter by merging into (and lifting) an existing node, which is rare.
3. Duplicates (same parent and token) merge; the `budget` best nodes by cumulative
   log-probability are kept (ancestors included, never over the budget).
"""

from __future__ import annotations

import torch

from specblock.drafters.base import Drafter, PendingPositions, PrefillFeedback, VerifyFeedback
from specblock.drafters.scored_tree import ROOT, CandidatePool
from specblock.drafters.specblock_model import SpecBlockModel, block_mask
from specblock.target.kv_cache import KVCache
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


class SpecBlockDrafter(Drafter):
    name = "specblock"
    needs_features = True

    def __init__(self, model: SpecBlockModel, fixed_topk: int | None = None, blocks: int = 2) -> None:
        """The ablations of design §9: `fixed_topk` replaces the rank head by a fixed width at
        slots k >= 1 (the top-1 probability caps and the slot-0 rule still apply); `blocks=1`
        drafts without inheritance (block 1 only, M = 1)."""
        super().__init__()
        if blocks not in (1, 2):
            raise ValueError("SpecBlock drafts with 1 or 2 blocks per iteration")
        self.model = model.eval()
        self.k = model.cfg.block_size
        self.fixed_topk = fixed_topk
        self.blocks = blocks
        self.cache: KVCache | None = None
        self.positions = 0  # context positions whose K slots sit in the cache
        self.pending = PendingPositions()

    # -- state --------------------------------------------------------------------------
    def begin(self, prefill: PrefillFeedback) -> None:
        c = self.model.cfg
        rows = (prefill.max_length + 2) * self.k
        if self.cache is None or self.cache.capacity < rows:
            self.cache = KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, rows, torch.float32, "cpu")
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
        hidden, logp, ranks = self._block_one()
        pool = CandidatePool()
        seeds = self._grow(pool, ROOT, 0.0, logp, ranks)
        if self.blocks == 2:
            reachable = set(pool.best(budget))
            seeds = [(node, slot) for node, slot in seeds if node in reachable]
            if seeds:
                self._block_two(pool, seeds, hidden)
        return pool.to_tree(budget)

    def _block_one(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the pending positions; cache all their slots; return the drafting position's
        pre-norm hiddens [K, H], log-probs [K, V] and rank classes [K]."""
        k = self.k
        n = len(self.pending)
        cached = self.cache.length
        cond, tokens = self.pending.take()
        positions = torch.arange(self.positions, self.positions + n)[None]
        mask = torch.cat([torch.ones(n * k, cached, dtype=torch.bool), block_mask(n, k)], dim=1)[None]
        out = self.model.blocks(cond, tokens, positions, mask, self._past(cached))
        for layer, (key, value) in enumerate(out.kv):
            self.cache.write(layer, cached, key[0], value[0])
        self.cache.length = cached + n * k
        self.positions += n
        self.forwards += 1
        hidden = out.hidden[0, -1]
        logits = self.model.logits(hidden)
        return hidden, torch.log_softmax(logits.float(), -1), self._rank_classes(hidden, logits)

    def _rank_classes(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.fixed_topk:
            return None  # the ablation does not consult the rank head
        return self.model.rank_logits(hidden, logits).argmax(-1)

    def _past(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.cache.view(layer, length) for layer in range(self.model.cfg.num_hidden_layers)]

    def _grow(
        self, pool: CandidatePool, parent: int, score: float, logp: torch.Tensor, ranks: torch.Tensor | None
    ) -> list[tuple[int, int]]:
        """Add one block's chain and alternatives under `parent`; return the seeds
        (node, slot) that inherit: alternatives, chain nodes that branched, the chain end."""
        seeds: list[tuple[int, int]] = []
        d2t = self.model.d2t
        chain_parent = parent
        for slot in range(self.k):
            row = logp[slot]
            p1 = float(row.max().exp())
            width = slot_width(slot, p1, 0 if ranks is None else int(ranks[slot]), fixed=self.fixed_topk)
            top = row.topk(width)
            ids = (top.indices + d2t[top.indices]).tolist()
            vals = top.values.tolist()
            chain_node = pool.add(ids[0], chain_parent, score + vals[0])
            for tok, val in zip(ids[1:], vals[1:]):
                seeds.append((pool.add(tok, chain_parent, score + val), slot))
            if width > 1 or slot == self.k - 1:
                seeds.append((chain_node, slot))
            score += vals[0]
            chain_parent = chain_node
        return seeds

    def _block_two(self, pool: CandidatePool, seeds: list[tuple[int, int]], hidden: torch.Tensor) -> None:
        """One batched forward over every seed; its slots branch under the seed node."""
        k = self.k
        s = len(seeds)
        cached = self.cache.length
        slots = torch.tensor([slot for _, slot in seeds])
        cond = hidden[slots][None]  # [1, S, H] inherited pre-norm hiddens
        tokens = torch.tensor([pool.tokens[node] for node, _ in seeds])[None]
        # the drafting position's K slots are the cache's last K rows: a seed from slot j sees 0..j
        seen = torch.ones(s * k, cached, dtype=torch.bool)
        last = torch.arange(k)
        seen[:, cached - k :] = last[None, :] <= slots.repeat_interleave(k)[:, None]
        own = block_mask(1, k).repeat(s, s) & (torch.arange(s * k)[:, None] // k == torch.arange(s * k)[None, :] // k)
        mask = torch.cat([seen, own], dim=1)[None]
        drafting = self.positions - 1
        positions = torch.full((1, s), drafting)
        out = self.model.blocks(cond, tokens, positions, mask, self._past(cached), inherited=True)
        self.forwards += 1
        hid = out.hidden[0]  # [S, K, H]
        logits = self.model.logits(hid)
        logp = torch.log_softmax(logits.float(), -1)
        ranks = self._rank_classes(hid, logits)
        for i, (node, _) in enumerate(seeds):
            self._grow(pool, node, pool.scores[node], logp[i], None if ranks is None else ranks[i])
