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
from specblock.target.primitives import CAUSAL
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
        """Computes in the dtype and on the device of the target's features, like SpecBlock."""
        super().__init__()
        self.model = model.eval()
        self.top_k, self.depth = top_k, depth
        self.cache: KVCache | None = None
        self.positions = 0
        self.pending = PendingPositions()

    def fork(self) -> "Eagle3Drafter":
        twin = Eagle3Drafter(self.model, self.top_k, self.depth)
        twin.calibration, twin.source_dir = getattr(self, "calibration", None), getattr(self, "source_dir", None)
        return twin

    def begin(self, prefill: PrefillFeedback) -> None:
        c = self.model.cfg
        # the context, then at most top_k x depth tree rows (10 x 7 at the largest scaled shape)
        rows = prefill.max_length + 2 + (self.top_k or 10) * (self.depth or 7)
        dtype, device = prefill.features.dtype, prefill.features.device
        cache = self.cache
        if cache is None or cache.capacity < rows or cache.keys.dtype != dtype or cache.keys.device != device:
            self.cache = KVCache(1, c.num_key_value_heads, c.head_dim, rows, dtype, device)
        self.cache.length = 0
        self.positions = 0
        self.pending.start(prefill)

    def observe(self, feedback: VerifyFeedback) -> None:
        self.pending.extend(feedback)

    def _shape(self, budget: int) -> tuple[int, int]:
        scaled = scaled_shape(budget)
        return self.top_k or scaled[0], self.depth or scaled[1]

    def _topk(self, hidden: torch.Tensor, k: int) -> list:
        """Top-k target ids and log-probs of each row of `hidden` [f, H], as one host list [f][2k]."""
        logits = self.model.logits(hidden).float()
        top = logits.topk(k, dim=-1)
        ids = top.indices + self.model.d2t[top.indices]
        logp = top.values - logits.logsumexp(-1, keepdim=True)
        return torch.cat([ids.double(), logp.double()], dim=-1).cpu().tolist()

    @torch.inference_mode()
    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        if budget <= 0 or not self.pending:
            return DraftTree()
        top_k, depth = self._shape(budget)
        # forward 1: the accepted positions (step 0 of training: features h_i with x_{i+1})
        n = len(self.pending)
        features, tokens = self.pending.take(self.cache.keys.dtype)
        device = features.device
        cached = self.cache.length
        mask = CAUSAL  # the first pass (the prompt, nothing cached) is plain causal attention: SDPA's fused kernel
        if cached:
            mask = torch.ones(n, cached + n, dtype=torch.bool, device=device).tril(cached)[None]
        positions = torch.arange(self.positions + 1, self.positions + 1 + n, device=device)[None]
        out, _ = self.model.step(features, tokens, positions, mask, cache=self.cache, cache_start=cached)
        self.cache.length = context = cached + n
        root_position = self.positions + n  # RoPE position of the drafting row
        self.positions += n
        self.forwards += 1

        # Tree rows: row r's output hidden is outs[r + 1] (outs[0] = the drafting row's output);
        # ancestors[r] marks row r's ancestors among the tree rows, itself included.
        max_rows = top_k * depth
        outs = out.new_empty(max_rows + 1, out.shape[-1])
        outs[0] = out[0, -1]
        ancestors = torch.zeros(max_rows, max_rows, dtype=torch.bool, device=device)
        pool = CandidatePool()
        source: dict[int, int] = {}  # pool node -> row of `outs` its input hidden comes from
        row_of: dict[int, int] = {}  # pool node -> its tree row
        row = self._topk(outs[:1], top_k)[0]
        frontier = [pool.add(int(t), ROOT, v) for t, v in zip(row[:top_k], row[top_k:])]
        source.update({node: 0 for node in frontier})
        for _ in range(depth):
            rows, f = len(row_of), len(frontier)
            new_rows = torch.arange(rows, rows + f, device=device)
            parent_rows = torch.tensor([row_of.get(pool.parents[node], -1) for node in frontier], device=device)
            tree = ancestors[parent_rows.clamp(min=0)] & (parent_rows >= 0)[:, None]
            tree[torch.arange(f, device=device), new_rows] = True
            ancestors[rows : rows + f] = tree
            mask = torch.cat([torch.ones(f, context, dtype=torch.bool, device=device), tree[:, : rows + f]], dim=1)
            hidden_in = outs[torch.tensor([source[node] for node in frontier], device=device)][None]
            tokens = torch.tensor([pool.tokens[node] for node in frontier], device=device)[None]
            pos = torch.tensor([root_position + pool.depths[node] for node in frontier], device=device)[None]
            out, _ = self.model.step(hidden_in, tokens, pos, mask[None], fused=True, cache=self.cache, cache_start=context + rows)
            self.forwards += 1
            outs[rows + 1 : rows + 1 + f] = out[0]
            for r, node in enumerate(frontier):
                row_of[node] = rows + r
            candidates = []
            for r, (node, top) in enumerate(zip(frontier, self._topk(out[0], top_k))):
                for t, v in zip(top[:top_k], top[top_k:]):
                    child = pool.add(int(t), node, pool.scores[node] + v)
                    source[child] = rows + r + 1
                    candidates.append(child)
            candidates = sorted(set(candidates), key=lambda c: -pool.scores[c])
            frontier = candidates[:top_k]
        return pool.to_tree(budget)
