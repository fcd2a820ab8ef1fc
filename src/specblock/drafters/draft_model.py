"""Classic speculative decoding with a smaller LM of the same tokenizer as drafter.

The draft model runs a greedy chain of `depth` tokens with its own KV cache; at each step
its next best `branch - 1` tokens hang off the chain as extra leaves (free: they come from
the logits already computed). After verification its cache is truncated to the longest
prefix it shares with what the target committed.
"""

from __future__ import annotations

import torch

from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.errors import InvalidSettingError
from specblock.target.kv_cache import KVCache
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree


class DraftModelDrafter(Drafter):
    name = "draft-model"

    def __init__(self, model: Transformer, depth: int = 5, branch: int = 2) -> None:
        super().__init__()
        if depth < 1 or branch < 1:
            raise InvalidSettingError("draft-model depth and branch must be >= 1")
        self.model = model
        self.depth = depth
        self.branch = branch
        self.cache: KVCache | None = None
        self._cached: list[int] = []  # tokens whose keys/values sit in self.cache, in order
        self._proposed_on: list[int] = []

    def fork(self) -> "DraftModelDrafter":
        return DraftModelDrafter(self.model, self.depth, self.branch)

    def begin(self, prefill: PrefillFeedback) -> None:
        capacity = prefill.max_length + 1
        if self.cache is None or self.cache.capacity < capacity:
            self.cache = self.model.new_cache(capacity)
        self.cache.length = 0
        self._cached = []

    def _run(self, tokens: list[int]) -> torch.Tensor:
        """Feed tokens after the cached prefix; return the logits after the last one."""
        start = len(self._cached)
        device = self.model.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(tokens), device=device)
        out = self.model.forward(ids, positions, self.cache, start)
        self.cache.length = start + len(tokens)
        self._cached.extend(tokens)
        self.forwards += 1
        return self.model.logits(out.hidden[-1])

    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        self._proposed_on = list(sequence)  # the loop extends `sequence` before observe()
        tree = DraftTree()
        room = self.model.cfg.max_position_embeddings - len(sequence)
        depth = min(self.depth, budget, room)
        if depth <= 0:
            return tree
        logits = self._run(sequence[len(self._cached) :])
        parent, score = -1, 0.0
        for step in range(depth):
            logp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logp, self.branch)
            best = int(top.indices[0])
            chain_node = tree.add(best, parent, score + float(top.values[0]))
            for alt, alt_logp in zip(top.indices[1:].tolist(), top.values[1:].tolist()):
                if len(tree) + (depth - step - 1) >= budget:
                    break  # keep room for the rest of the main chain first
                tree.add(alt, parent, score + alt_logp)
            parent, score = chain_node, tree.scores[chain_node]
            if step + 1 < depth:
                logits = self._run([best])
        return tree

    def observe(self, feedback: VerifyFeedback) -> None:
        committed = self._proposed_on + feedback.tokens[1:]
        keep = 0
        for a, b in zip(self._cached, committed):
            if a != b:
                break
            keep += 1
        del self._cached[keep:]
        self.cache.truncate(keep)
