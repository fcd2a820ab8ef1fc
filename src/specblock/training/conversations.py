"""Read training conversations from the formats the project meets.

- UltraChat-style JSONL: `{"messages": [{"role", "content"}, ...]}` (also our regen output);
- ShareGPT JSON or JSONL: `{"conversations": [{"from": "human"|"gpt", "value"}]}`;
- GSM8K-style JSONL: `{"question": ...}` (a single user turn);
- Spec-Bench JSONL: `{"question_id", "category", "turns": [...]}` (user turns; the category is
  the source). For evaluation only: its answers measure, never train;
- Alpaca JSON: `{"instruction", "input", "output"}`: the prompt is the instruction, then a
  blank line and the input when there is one. The `output` was written by another model, so
  it is not read (the target writes its own answer).

Every reader yields `Conversation`s with OpenAI-style messages; whether assistant turns are
present depends on the file (prompt files for `data regen` need none, answer files for
`data prepare` need them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from specblock.errors import InvalidSettingError

HELDOUT_FRACTION = 0.03  # of each source, kept out of training for evaluation
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Conversation:
    id: str
    source: str
    messages: list[dict]
    extra: dict = field(default_factory=dict)  # e.g. finish_reason of a regenerated answer

    def first_user_turn(self) -> list[dict]:
        """Messages up to and including the first user message (the prompt to answer)."""
        for i, m in enumerate(self.messages):
            if m["role"] == "user":
                return self.messages[: i + 1]
        raise InvalidSettingError(f"conversation {self.id} has no user message")

    def user_turns(self) -> list[int]:
        """Indices of the user messages: turn t's prompt is `messages[: user_turns()[t] + 1]`."""
        return [i for i, m in enumerate(self.messages) if m["role"] == "user"]

    @property
    def heldout(self) -> bool:
        return is_heldout(self.source, self.id)


def is_heldout(source: str, conv_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a conversation belongs to the held-out split: a hash of (source, id), so the split
    of a conversation never changes as data grows, and each source keeps about `fraction` out."""
    digest = hashlib.sha256(f"heldout\0{source}\0{conv_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


T = TypeVar("T")


def round_robin(queues: list[list[T]]) -> list[T]:
    """One item of each queue in turn (each in its own order) until all are empty, so that any
    prefix of the result mixes every queue: how the sources are interleaved."""
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _records(path: Path) -> Iterator[dict]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSettingError(f"{path}: not valid JSON ({exc})") from None
        yield from rows
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidSettingError(f"{path}:{n}: not valid JSON ({exc})") from None


def _source_name(path: Path) -> str:
    stem = path.stem.lower()
    for known in ("ultrachat", "sharegpt", "gsm8k"):
        if known in stem:
            return known
    return stem


def read_conversations(path: Path) -> list[Conversation]:
    """All conversations of one file (whichever of the formats it uses) or of a regen directory."""
    path = Path(path)
    if path.is_dir():  # a `data regen` output: its answers files, in order
        files = sorted(path.glob("answers-*.jsonl"))
        if not files:
            raise InvalidSettingError(f"{path} holds no answers-*.jsonl files (a `specblock data regen` output)")
        return [conv for f in files for conv in read_conversations(f)]
    if not path.is_file():
        raise InvalidSettingError(f"no such data file: {path}")
    default_source = _source_name(path)
    out: list[Conversation] = []
    for n, row in enumerate(_records(path)):
        if not isinstance(row, dict):
            raise InvalidSettingError(f"{path}: record {n} is not a JSON object")
        source = str(row.get("source", row.get("category", default_source)))
        rid = str(row.get("id", row.get("question_id", f"{default_source}-{n}")))
        extra = {k: row[k] for k in ("finish_reason",) if k in row}
        if "messages" in row:
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        elif "conversations" in row:
            messages = []
            for m in row["conversations"]:
                role = _SHAREGPT_ROLES.get(m.get("from", ""))
                if role is None:
                    raise InvalidSettingError(f"{path}: record {n} has an unknown speaker {m.get('from')!r}")
                messages.append({"role": role, "content": m["value"]})
        elif "question" in row:
            messages = [{"role": "user", "content": row["question"]}]
        elif "turns" in row:  # Spec-Bench / MT-bench questions: the user turns only (evaluation)
            messages = [{"role": "user", "content": str(t)} for t in row["turns"]]
        elif "instruction" in row:
            extra_input = str(row.get("input") or "").strip()
            prompt = str(row["instruction"]).strip() + (f"\n\n{extra_input}" if extra_input else "")
            messages = [{"role": "user", "content": prompt}]
        else:
            raise InvalidSettingError(
                f"{path}: record {n} has none of 'messages', 'conversations', 'question', 'turns' or 'instruction' "
                f"(keys: {sorted(row)})"
            )
        if not messages:
            continue
        out.append(Conversation(rid, source, messages, extra))
    return out
