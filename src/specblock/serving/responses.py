"""One request's OpenAI response objects: the chunks of a stream or the whole response,
with the `usage` and `specblock` summary fields."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

from specblock.decoding import DecodeSettings, DecodeStats
from specblock.serving.scheduler import Finished, Tokens
from specblock.serving.schemas import ChatCompletionRequest, CompletionRequest
from specblock.serving.text_stream import TextAssembler

if TYPE_CHECKING:
    from specblock.serving.app import Server

FINISH_REASON = {"eos": "stop", "stop_string": "stop", "length": "length", "context": "length"}


class Reply:
    """Builds one request's OpenAI objects: the chunks of a stream, or the whole response."""

    def __init__(self, server: "Server", body: ChatCompletionRequest | CompletionRequest, ids: list[int],
                 settings: DecodeSettings) -> None:  # fmt: skip
        self.server, self.body, self.ids = server, body, ids
        self.chat = isinstance(body, ChatCompletionRequest)
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text = TextAssembler(server.gen.tokenizer.decode, settings.stop_strings)
        self.pieces: list[tuple[str, str]] = []
        self.iterations = 0
        self.tokens = 0

    def _chunk(self, content: str | None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if content is None else {"content": content})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": content or "", "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.server.config.model_name,
                "choices": [choice]}  # fmt: skip

    def opening(self) -> dict:
        return self._chunk(None, role=True) if self.chat else self._chunk("")

    def add(self, event: Tokens) -> list[tuple[str, str]]:
        """Take one iteration's tokens; returns the (origin, text) pieces now safe to send."""
        self.iterations += 1  # the prefill counts as one target forward, like tau's
        self.tokens += len(event.tokens)
        pieces = self.text.add(event.tokens, event.drafted)
        self.pieces += pieces
        return pieces

    def chunk(self, pieces: list[tuple[str, str]]) -> dict:
        """A streamed chunk with these pieces, tagged by origin for the web view."""
        chunk = self._chunk("".join(text for _, text in pieces))
        chunk["specblock"] = {"pieces": [{"origin": o, "text": t} for o, t in pieces],
                              "tokens": self.tokens, "target_forwards": self.iterations}  # fmt: skip
        return chunk

    def closing(self, done: Finished) -> list[dict]:
        rest = self.text.finish()
        self.pieces += rest
        chunks = [self.chunk(rest)] if rest else []
        last = self._chunk(None, FINISH_REASON.get(done.stats.stop_reason, "stop"))
        last["usage"] = self._usage(done)
        last["specblock"] = self._summary(done)
        chunks.append(last)
        options = self.body.stream_options
        if options is not None and options.include_usage:  # OpenAI's usage-only chunk, choices empty
            chunks.append({**self._chunk(None), "choices": [], "usage": last["usage"]})
        return chunks

    def whole(self, done: Finished) -> dict:
        self.pieces += self.text.finish()
        text = "".join(t for _, t in self.pieces)
        finish = FINISH_REASON.get(done.stats.stop_reason, "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion", "created": self.created,
                "model": self.server.config.model_name, "choices": [choice], "usage": self._usage(done),
                "specblock": self._summary(done)}  # fmt: skip

    def _usage(self, done: Finished) -> dict:
        new = done.stats.new_tokens
        return {"prompt_tokens": len(self.ids), "completion_tokens": new, "total_tokens": len(self.ids) + new}

    def _summary(self, done: Finished) -> dict:
        s, gen = done.stats, self.server.gen
        iterations = max(len(s.target_s), 1)
        return {
            "method": gen.method, "node_budget": gen.node_budget, "dtype": gen.target.dtype_name,
            "tau": round(tau(s), 4), "target_forwards": s.target_forwards, "drafter_forwards": s.drafter_forwards,
            "accepted_lengths": s.accepted_lengths, "stop_reason": s.stop_reason,
            "mean_tree_nodes": round(sum(s.tree_sizes) / iterations, 3),
            "prefill_ms": round(1000 * s.prefill_s, 3), "wall_ms": round(1000 * s.wall_s, 3),
            "draft_ms_per_iteration": round(1000 * sum(s.draft_s) / iterations, 3),
            "target_ms_per_iteration": round(1000 * sum(s.target_s) / iterations, 3),
            "mean_batch_size": round(sum(done.batch_sizes) / max(len(done.batch_sizes), 1), 3),
        }  # fmt: skip


def tau(stats: DecodeStats) -> float:
    return stats.new_tokens / max(stats.target_forwards, 1)


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
