"""The target side of one request: prefill, tree verification and KV-cache compaction.

Invariant between calls: the cache holds every committed token except the newest one
(the *root*), which the next `verify` runs first, followed by the draft tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specblock.errors import ContextLengthError
from specblock.target.kv_cache import KVCache
from specblock.target.transformer import Segment, Transformer
from specblock.tree import DraftTree, verify_layout, verify_paths


@dataclass
class TargetStep:
    logits: torch.Tensor  # [n, V] float32 next-token logits of each processed token
    features: torch.Tensor | None  # [n, 3H] captured hidden states of each processed token


class TargetRunner:
    def __init__(self, model: Transformer, cache: KVCache | None = None) -> None:
        """`cache`: a cache to use while it is large enough (the server's pooled batch slots)."""
        self.model = model
        self.cache = cache
        self.forwards = 0

    @property
    def context_limit(self) -> int:
        return self.model.cfg.max_position_embeddings

    @property
    def length(self) -> int:
        """Tokens whose keys/values are in the cache (all committed tokens but the root)."""
        return 0 if self.cache is None else self.cache.length

    def prefill(
        self, prompt: list[int], capacity: int, capture: bool, logit_rows: list[int] = (), reuse: int = 0
    ) -> TargetStep:  # fmt: skip
        """Run the prompt; returns every position's features and the logits of the positions in
        `logit_rows` followed by the last position (the one that picks the first new token).

        `reuse`: the cache already holds this prompt's first `reuse` tokens (the previous request
        on this runner began with them: a conversation's next turn), so only the rest runs; the
        features then cover positions [reuse, len) and `logit_rows` must lie in that range."""
        if not prompt:
            raise ContextLengthError("the prompt is empty: give at least one token")
        if len(prompt) >= self.context_limit:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens; the target's context holds {self.context_limit}, "
                "so it must be shorter to leave room for at least one new token"
            )
        held = self.cache is not None and reuse <= self.cache.length and self.cache.capacity >= capacity
        if reuse and not (0 < reuse < len(prompt) and held):
            raise ValueError(f"cannot reuse {reuse} cached tokens for a {len(prompt)}-token prompt")
        if any(row < reuse for row in logit_rows):
            raise ValueError("logit rows before the reused prefix have no new logits")
        if self.cache is None or self.cache.capacity < capacity:
            self.cache = self.model.new_cache(capacity)
        self.cache.length = reuse
        device = self.model.device
        tokens = torch.tensor(prompt[reuse:], dtype=torch.long, device=device)
        positions = torch.arange(reuse, len(prompt), device=device)
        out = self.model.forward(tokens, positions, self.cache, reuse, capture=capture)
        self.cache.length = len(prompt)
        self.forwards = 1
        rows = torch.tensor([*logit_rows, len(prompt) - 1], device=device) - reuse
        # exact calls: the last row's logits must not depend on how many logit rows came with it
        logits = self.model.logits(out.hidden[rows], self.model.batch_invariant)
        return TargetStep(logits=logits, features=out.features)

    def verify(self, root: int, tree: DraftTree, capture: bool) -> TargetStep:
        """One forward over the root and the tree's nodes (ancestor mask, depth-based positions)."""
        return verify_batch([self], [root], [tree], capture)[0]

    def verify_segment(self, root: int, tree: DraftTree) -> Segment:
        """The rows this request adds to a verify forward: the root, then the tree's nodes."""
        cache = self.cache
        start = cache.length
        device = self.model.device
        tokens = torch.tensor([root, *tree.tokens], dtype=torch.long, device=device)
        if tree.tokens:
            tree_mask, depth = verify_layout(tree, device)
            context = torch.ones(len(tokens), start, dtype=torch.bool, device=device)
            mask = torch.cat([context, tree_mask], dim=1)
            positions = start + depth
        else:
            mask, positions = None, torch.tensor([start], device=device)
        paths = verify_paths(tree, device) if self.model.batch_invariant else None
        return Segment(tokens, positions, cache, start, mask, paths, start + max(tree.depths(), default=0))

    def commit(self, path: list[int]) -> None:
        """Keep the accepted path's keys/values (verify indices, root first) right after the context."""
        self.cache.keep_path(self.cache.length, path)


def verify_batch(runners: list[TargetRunner], roots: list[int], trees: list[DraftTree], capture: bool) -> list[TargetStep]:
    """Verify the trees of several requests (one runner each, all on one model) in ONE target
    forward: the products take every row at once, each request attends to its own cache. A
    request's step is what `verify` of that request alone returns (bit for bit on a
    batch-invariant model)."""
    model = runners[0].model
    if any(r.model is not model for r in runners):
        raise ValueError("a batched verification runs requests of one model")
    segments = [r.verify_segment(root, tree) for r, root, tree in zip(runners, roots, trees)]
    out = model.forward_segments(segments, capture=capture)
    logits = model.logits(out.hidden, out.exact)
    steps, offset = [], 0
    for runner, segment in zip(runners, segments):
        rows = slice(offset, offset + segment.tokens.shape[0])
        runner.forwards += 1
        steps.append(TargetStep(logits=logits[rows], features=None if out.features is None else out.features[rows]))
        offset = rows.stop
    return steps
