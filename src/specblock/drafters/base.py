"""The one interface every drafter implements (documented in docs/drafter-interface.md).

Per request the engine calls `begin` once after the prefill, then alternates `propose`
(draft a tree within the node budget) and `observe` (the verifier's free feedback). A
drafter keeps its own cache and rolls it back in `observe` to what the target accepted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from specblock.tree import DraftTree


@dataclass
class PrefillFeedback:
    prompt: list[int]  # prompt token ids
    features: torch.Tensor | None  # [P, 3H] target features of the prompt tokens (if requested)
    first_token: int  # the token the target produced after the prompt (the first root)
    max_length: int  # cache slots the request can need: committed tokens (<= context) + root + budget


@dataclass
class VerifyFeedback:
    """What one verification tells the drafter, at no extra target cost.

    `tokens` are the accepted path (root first) now committed to the target's cache;
    `features[j]` and `logits[j]` are the target's hidden features and next-token logits at
    `tokens[j]`, so `logits[j]` is the distribution that produced `tokens[j+1]` (and, for the
    last row, `next_token`). `rejected_node` is the first draft node off the path whose
    parent was accepted, when there was one: the target's `next_token` is its correction.
    """

    tokens: list[int]
    start_position: int
    features: torch.Tensor | None
    logits: torch.Tensor
    next_token: int
    accepted_nodes: list[int]  # draft-tree indices of the accepted nodes, in path order
    rejected_node: int | None


class Drafter(ABC):
    """Proposes draft trees; `forwards` counts the drafter's model calls (0 for model-free drafters)."""

    name: str = "drafter"
    needs_features: bool = False  # ask the target to capture hidden features for this drafter

    def __init__(self) -> None:
        self.forwards = 0

    @abstractmethod
    def fork(self) -> "Drafter":
        """A drafter with the same weights and settings but its own per-request state, so that
        several requests can draft side by side (the server's batches)."""

    @abstractmethod
    def begin(self, prefill: PrefillFeedback) -> None:
        """Start a new request (drop any previous request's state)."""

    @abstractmethod
    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        """Draft at most `budget` nodes continuing `sequence` (prompt + generated, root last)."""

    @abstractmethod
    def observe(self, feedback: VerifyFeedback) -> None:
        """Receive the verification result and roll the drafter's own state back to it."""


class PendingPositions:
    """Context positions a feature-conditioned drafter has not run yet.

    Position j pairs the target feature after token j with token j+1 (the training pairing);
    the last pending position pairs the last committed feature with the root token, whose own
    feature arrives with the next verification. Features stay where the target made them (its
    device and dtype, which the drafter shares), in the chunks they arrived in.
    """

    def __init__(self) -> None:
        self.features: list[torch.Tensor] = []
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def start(self, prefill: PrefillFeedback) -> None:
        self.features = [prefill.features]
        self.tokens = list(prefill.prompt[1:]) + [prefill.first_token]

    def extend(self, feedback: VerifyFeedback) -> None:
        self.features.append(feedback.features)
        self.tokens += list(feedback.tokens[1:]) + [feedback.next_token]

    def take(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, n, F] features (in `dtype` if given) and [1, n] tokens of every pending position,
        on the features' device; empties the list."""
        features = self.features[0] if len(self.features) == 1 else torch.cat(self.features)
        if dtype is not None:
            features = features.to(dtype)
        tokens = torch.tensor(self.tokens, device=features.device)
        self.features, self.tokens = [], []
        return features[None], tokens[None]
