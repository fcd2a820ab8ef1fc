"""From a request's tokens to the text a client may see, piece by piece, tagged by origin.

Two things are held back until more tokens arrive: half a UTF-8 character (the tokenizer
decodes it as U+FFFD), and a tail that may be the start of a stop string. OpenAI clients
expect the stop string itself left out of the text, so it is never sent.
"""

from __future__ import annotations

from collections.abc import Callable


CONTEXT_TOKENS = 4  # tokens decoded again before new ones, so that joins (leading spaces) decode right


class TextAssembler:
    """Decodes incrementally: each step decodes a few context tokens plus the new ones, not the
    whole output again, so the cost per step does not grow with the output."""

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stop_strings = stop_strings
        self.tokens: list[int] = []
        self.text = ""  # decoded text of tokens[:_read]
        self.sent = 0  # characters of `text` already handed out
        self._prefix = 0  # tokens[_prefix:_read] are the context of the next decode
        self._read = 0
        self._runs: list[tuple[int, str]] = []  # (end character, origin) of consecutive text runs

    def add(self, tokens: list[int], drafted: int) -> list[tuple[str, str]]:
        """Take one iteration's tokens (the first `drafted` from the draft); return the
        (origin, text) pieces now safe to send, origin 'draft' or 'target'."""
        if drafted:
            self._extend(tokens[:drafted], "draft")
        self._extend(tokens[drafted:], "target")
        return self._take(self._safe_end())

    def finish(self) -> list[tuple[str, str]]:
        """Everything left once generation ended, cut before a stop string if one occurred."""
        whole = self.decode(self.tokens)  # the exact text, where it agrees with what was sent
        if whole.startswith(self.text[: self.sent]):
            self.text = whole
            self._runs.append((len(whole), "target"))
        return self._take(self._stop_index(self.text))

    def _extend(self, tokens: list[int], origin: str) -> None:
        self.tokens += tokens
        context = self.decode(self.tokens[self._prefix : self._read])
        fresh = self.decode(self.tokens[self._prefix :])
        if fresh.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
            return
        if fresh.startswith(context):
            self.text += fresh[len(context) :]
        else:  # the context decodes differently now: decode everything once
            self.text = self.decode(self.tokens)
        self._prefix, self._read = max(0, len(self.tokens) - CONTEXT_TOKENS), len(self.tokens)
        self._runs.append((len(self.text), origin))

    def _stop_index(self, text: str) -> int:
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return min(hits, default=len(text))

    def _safe_end(self) -> int:
        text = self.text
        end = self._stop_index(text)
        for stop in self.stop_strings:  # a tail that could grow into this stop string
            for k in range(min(len(stop) - 1, end), 0, -1):
                if text[end - k : end] == stop[:k]:
                    end -= k
                    break
        return max(end, self.sent)

    def _take(self, end: int) -> list[tuple[str, str]]:
        pieces: list[tuple[str, str]] = []
        start = self.sent
        for run_end, origin in self._runs:
            if run_end <= start:
                continue
            stop = min(run_end, end)
            if stop > start:
                if pieces and pieces[-1][0] == origin:
                    pieces[-1] = (origin, pieces[-1][1] + self.text[start:stop])
                else:
                    pieces.append((origin, self.text[start:stop]))
                start = stop
            if start >= end:
                break
        if start < end:  # text that re-decoding moved past the recorded runs
            pieces.append(("target", self.text[start:end]))
        self.sent = end
        self._runs = [run for run in self._runs if run[0] > end]
        return pieces
