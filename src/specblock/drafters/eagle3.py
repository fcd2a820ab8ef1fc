"""EAGLE-3 drafting with the EAGLE-2 dynamic tree (design §7): the baseline.

Forward 1 runs the newly accepted positions (fused target features, cached for good) and
gives the root's children. Each later forward expands the current frontier, the `top_k`
best nodes by cumulative log-probability: every frontier node takes its parent's output
hidden and its own token, sees the context and its ancestors, and proposes `top_k`
children; all top_k^2 candidates join the pool and the best `top_k` become the next
frontier. After `depth` expansions (depth + 1 forwards) the pool is reranked and the best
`budget` nodes are kept (59 at parity, i.e. EAGLE's total_tokens = 60 with the root).

For budgets below parity, top_k and depth shrink with the budget (`scaled_shape`):
top_k = clamp(ceil(budget / 6), 2, 10), depth = clamp(budget // 2, 2, 7); 59 gives the
paper's top_k 10, depth 7.
"""

from __future__ import annotations

import math

import torch

from specblock.drafters.base import Drafter, PendingPositions, PrefillFeedback, VerifyFeedback
from specblock.drafters.eagle3_model import Eagle3Model
from specblock.drafters.scored_tree import ROOT, CandidatePool
from specblock.target.kv_cache import KVCache
from specblock.tree import DraftTree


def scaled_shape(budget: int) -> tuple[int, int]:
    """(top_k, depth) for a node budget; (10, 7) at the parity budget 59."""
    top_k = min(10, max(2, math.ceil(budget / 6)))
    depth = min(7, max(2, budget // 2))
    return top_k, depth


class Eagle3Drafter(Drafter):
    name = "eagle3"
    needs_features = True

    def __init__(self, model: Eagle3Model, top_k: int | None = None, depth: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.top_k, self.depth = top_k, depth
        self.cache: KVCache | None = None
        self.positions = 0
        self.pending = PendingPositions()

    def begin(self, prefill: PrefillFeedback) -> None:
        c = self.model.cfg
        rows = prefill.max_length + 2
        if self.cache is None or self.cache.capacity < rows:
            self.cache = KVCache(1, c.num_key_value_heads, c.head_dim, rows, torch.float32, "cpu")
        self.cache.length = 0
        self.positions = 0
        self.pending.start(prefill)

    def observe(self, feedback: VerifyFeedback) -> None:
        self.pending.extend(feedback)

    def _topk_tokens(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.log_softmax(self.model.logits(hidden).float(), -1)
        top = logp.topk(k, dim=-1)
        return top.indices + self.model.d2t[top.indices], top.values

    @torch.inference_mode()
    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        if budget <= 0 or not self.pending:
            return DraftTree()
        scaled = scaled_shape(budget)
        top_k = self.top_k or scaled[0]
        depth = self.depth or scaled[1]
        # forward 1: the accepted positions (step 0 of training: features h_i with x_{i+1})
        n = len(self.pending)
        features, tokens = self.pending.take()
        cached = self.cache.length
        mask = torch.cat([torch.ones(n, cached, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], 1)[None]
        positions = torch.arange(self.positions + 1, self.positions + 1 + n)[None]
        out, (key, value) = self.model.step(features, tokens, positions, mask, self.cache.view(0, cached))
        self.cache.write(0, cached, key[0], value[0])
        self.cache.length = context = cached + n
        root_position = self.positions + n  # RoPE position of the drafting row
        self.positions += n
        self.forwards += 1

        pool = CandidatePool()
        ids, vals = self._topk_tokens(out[0, -1], top_k)
        frontier = [pool.add(t, ROOT, v) for t, v in zip(ids.tolist(), vals.tolist())]
        parent_hidden = {node: out[0, -1] for node in frontier}  # hidden a node's row takes as input
        tree_keys: list[torch.Tensor] = []
        tree_values: list[torch.Tensor] = []
        row_of: dict[int, int] = {}  # pool node -> its row among this iteration's tree rows
        for _ in range(depth):
            rows = len(row_of)
            f = len(frontier)
            mask = torch.zeros(f, context + rows + f, dtype=torch.bool)
            mask[:, :context] = True
            for r, node in enumerate(frontier):
                ancestor = pool.parents[node]
                while ancestor != ROOT:
                    mask[r, context + row_of[ancestor]] = True
                    ancestor = pool.parents[ancestor]
                mask[r, context + rows + r] = True
            past_k, past_v = self.cache.view(0, context)
            if tree_keys:
                past_k = torch.cat([past_k, *tree_keys], 2)
                past_v = torch.cat([past_v, *tree_values], 2)
            hidden_in = torch.stack([parent_hidden[node] for node in frontier])[None]
            tokens = torch.tensor([pool.tokens[node] for node in frontier])[None]
            pos = torch.tensor([root_position + pool.depths[node] for node in frontier])[None]
            out, (key, value) = self.model.step(hidden_in, tokens, pos, mask[None], (past_k, past_v), fused=True)
            self.forwards += 1
            tree_keys.append(key)
            tree_values.append(value)
            for r, node in enumerate(frontier):
                row_of[node] = rows + r
            ids, vals = self._topk_tokens(out[0], top_k)
            candidates = []
            for r, node in enumerate(frontier):
                for t, v in zip(ids[r].tolist(), vals[r].tolist()):
                    child = pool.add(t, node, pool.scores[node] + v)
                    parent_hidden[child] = out[0, r]
                    candidates.append(child)
            candidates = sorted(set(candidates), key=lambda c: -pool.scores[c])
            frontier = candidates[:top_k]
        return pool.to_tree(budget)
