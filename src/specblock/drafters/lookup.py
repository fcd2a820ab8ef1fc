"""Prompt lookup (n-gram) drafting: continue the text the way it continued before.

The drafter indexes every n-gram of the prompt and the generated text. To draft, it looks
up the last n tokens (longest n first) and takes what followed each earlier occurrence,
most recent first; the continuations are merged into one tree, so several matches are
verified together.

Defaults draft only after a match of 3-4 tokens. On a CPU a tree forward costs about two
one-token forwards, so weak (1-2 token) matches lose time: on 12 Spec-Bench prompts with
SmolLM2-135M, matches from 1 token gave tau 1.65 but 0.93x, from 3 tokens tau 1.36 and
1.15x (benchmarks/results/lookup_ngram_sizes.txt). Where verification is nearly free
(GPUs), `min_ngram=1` accepts more.
"""

from __future__ import annotations

from collections import defaultdict

from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.errors import InvalidSettingError
from specblock.tree import DraftTree, TrieBuilder


class LookupDrafter(Drafter):
    name = "lookup"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 3, max_depth: int = 10, max_matches: int = 8) -> None:
        super().__init__()
        if not 1 <= min_ngram <= max_ngram:
            raise InvalidSettingError(f"n-gram sizes must satisfy 1 <= min ({min_ngram}) <= max ({max_ngram})")
        if max_depth < 1 or max_matches < 1:
            raise InvalidSettingError("max_depth and max_matches must be >= 1")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.max_depth = max_depth
        self.max_matches = max_matches
        self._indexed = 0
        self._ends: dict[tuple[int, ...], list[int]] = defaultdict(list)

    def fork(self) -> "LookupDrafter":
        return LookupDrafter(self.max_ngram, self.min_ngram, self.max_depth, self.max_matches)

    def begin(self, prefill: PrefillFeedback) -> None:
        self._indexed = 0
        self._ends = defaultdict(list)

    def _index(self, sequence: list[int]) -> None:
        """Index the n-grams ending at each position not indexed yet (committed text only grows)."""
        for end in range(self._indexed, len(sequence)):
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n + 1 < 0:
                    break
                self._ends[tuple(sequence[end - n + 1 : end + 1])].append(end)
        self._indexed = len(sequence)

    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        self._index(sequence)
        builder = TrieBuilder(budget)
        last = len(sequence) - 1
        for n in range(min(self.max_ngram, len(sequence)), self.min_ngram - 1, -1):
            ends = self._ends.get(tuple(sequence[-n:]), [])
            taken = 0
            for end in reversed(ends):
                if builder.full or taken >= self.max_matches:
                    break
                if end == last:
                    continue
                continuation = sequence[end + 1 : end + 1 + self.max_depth]
                builder.insert(continuation, score=n + 1.0 / (taken + 1))
                taken += 1
            if builder.full:
                break
        return builder.tree

    def observe(self, feedback: VerifyFeedback) -> None:
        pass
