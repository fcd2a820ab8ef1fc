"""Shared test helpers: running the decoding loop directly, drafters with fixed proposals, and
holding a serving engine between iterations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from specblock.decoding import DecodeSettings, DecodeStats, speculative_decode
from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.serving.scheduler import BatchScheduler
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


@contextmanager
def held_iterations(scheduler: BatchScheduler) -> Iterator[threading.Event]:
    """Make the engine wait before each speculative iteration until the yielded event is set
    (prefills still run, so a request's first token goes out). A test sets it once the moment
    it checks has happened: on a fast machine a long request could otherwise end first. On exit
    the event is set and the scheduler's own method is back."""
    release, iterate = threading.Event(), scheduler._iterate
    scheduler._iterate = lambda: (release.wait(30), iterate())
    try:
        yield release
    finally:
        release.set()
        del scheduler._iterate


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
