"""Plain autoregressive decoding through the same engine: an empty draft every iteration."""

from __future__ import annotations

from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.tree import DraftTree


class VanillaDrafter(Drafter):
    """The speedup baseline: each target forward yields exactly one token (tau = 1)."""

    name = "vanilla"

    def fork(self) -> "VanillaDrafter":
        return VanillaDrafter()

    def begin(self, prefill: PrefillFeedback) -> None:
        pass

    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        return DraftTree()

    def observe(self, feedback: VerifyFeedback) -> None:
        pass
