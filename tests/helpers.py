"""Shared test helpers: running the decoding loop directly and drafters with fixed proposals."""

from __future__ import annotations

from specblock.decoding import DecodeSettings, DecodeStats, speculative_decode
from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree


def run_decode(model: Transformer, drafter: Drafter, prompt: list[int], **settings) -> tuple[list[int], DecodeStats]:
    """Drive `speculative_decode` to the end; return the generated ids and the stats."""
    steps = speculative_decode(TargetRunner(model), drafter, prompt, DecodeSettings(**settings))
    out: list[int] = []
    while True:
        try:
            out += next(steps)
        except StopIteration as stop:
            return out, stop.value


class FixedTreeDrafter(Drafter):
    """Proposes the same tree every iteration, whatever the context (a worst case for acceptance)."""

    name = "fixed"

    def __init__(self, tree: DraftTree) -> None:
        super().__init__()
        self.tree = tree
        self.feedback: list[VerifyFeedback] = []

    def fork(self) -> "FixedTreeDrafter":
        return FixedTreeDrafter(self.tree)

    def begin(self, prefill: PrefillFeedback) -> None:
        self.feedback = []

    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        return self.tree

    def observe(self, feedback: VerifyFeedback) -> None:
        self.feedback.append(feedback)
