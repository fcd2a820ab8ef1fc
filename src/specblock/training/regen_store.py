"""Where `data regen` writes: numbered flushes of finished conversations, safe to kill.

Flush k writes `train-k.safetensors` and `heldout-k.safetensors` (the shard format of
`data prepare`: tokens, answer mask, features, top-k ids and log-probabilities, offsets),
then `answers-k.jsonl` (the text rows, in shard order), each through a temporary file and a
rename. The answers file is written last, so it marks the flush complete: a rerun counts the
conversations of the complete flushes as done and overwrites any shard of an incomplete one.
`regen.json` keeps the settings that shape the output; a rerun with other ones is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from specblock.errors import SpecBlockError
from specblock.training.conversations import read_conversations, round_robin
from specblock.training.prepare import pack_shard, save_shard, write_json, write_text_atomic

SPLITS = ("train", "heldout")
_ANSWERS = re.compile(r"answers-(\d{5})\.jsonl$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


class RegenStore:
    def __init__(self, out: Path, settings: dict, shard_size: int = 64) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self._check_settings(settings)
        self.index = self._complete_flushes()
        self._rows: dict[str, list[tuple[dict, dict[str, torch.Tensor]]]] = {s: [] for s in SPLITS}

    def _check_settings(self, settings: dict) -> None:
        path = self.out / "regen.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != settings:
                changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                raise SpecBlockError(
                    f"{self.out} holds answers regenerated with other settings ({', '.join(changed)} differ); "
                    "rerun with the same ones to resume, or use a new --out"
                )
        else:
            write_json(path, settings)

    def _complete_flushes(self) -> int:
        indices = sorted(int(m.group(1)) for p in self.out.iterdir() if (m := _ANSWERS.match(p.name)))
        if indices != list(range(len(indices))):
            raise SpecBlockError(f"{self.out}: answers files are not numbered 0..{len(indices) - 1}; was one removed?")
        return len(indices)

    def done_ids(self) -> set[str]:
        return {str(row["id"]) for row in answer_rows(self.out)}

    def shard_files(self) -> dict[str, list[str]]:
        """The shards of the complete flushes, by split (a split can skip a flush)."""
        return {
            s: [shard_name(s, i) for i in range(self.index) if (self.out / shard_name(s, i)).exists()] for s in SPLITS
        }

    @property
    def buffered(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def add(self, row: dict, record: dict[str, torch.Tensor], heldout: bool) -> None:
        """Buffer one finished conversation (its JSONL row and its per-token tensors)."""
        self._rows["heldout" if heldout else "train"].append((row, record))
        if self.buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        rows = []
        for split in SPLITS:
            path = self.out / shard_name(split, self.index)
            if self._rows[split]:
                save_shard(path, pack_shard([record for _, record in self._rows[split]]))
                rows += [row for row, _ in self._rows[split]]
            elif path.exists():
                path.unlink()  # left by an incomplete flush of this index
        write_text_atomic(self.out / f"answers-{self.index:05d}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        self.index += 1
        self._rows = {s: [] for s in SPLITS}


def answer_rows(out: Path) -> Iterator[dict]:
    """Every conversation row of a regen directory's complete flushes, in flush order."""
    out = Path(out)
    if not out.is_dir():
        raise SpecBlockError(f"{out} is not a `data regen` directory")
    for path in sorted(p for p in out.iterdir() if _ANSWERS.match(p.name)):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "id" not in row:
                raise SpecBlockError(f"{path}:{n}: not a regenerated-answer row")
            yield row


def heldout_questions(
    paths: list[Path], sources: set[str] | None = None, per_source: int | None = None, max_turns: int = 1
) -> list[dict]:
    """The held-out conversations as Spec-Bench questions (`question_id`, `category` = the
    source, `turns` = their first `max_turns` user turns), taken one source after another so
    that any prefix of the list mixes the sources. `specblock bench --data` reads them.

    Each path is a regen directory (its rows marked held out) or a prompt file (its prompts
    whose (source, id) hash holds them out): the same split, so a bench of held-out prompts
    needs no regenerated data."""
    by_source: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for path in paths:
        for conv_id, source, user_turns in _heldout_conversations(Path(path)):
            if conv_id in seen or (sources and source not in sources):
                continue
            seen.add(conv_id)
            rows = by_source.setdefault(source, [])
            if per_source is None or len(rows) < per_source:
                rows.append({"question_id": conv_id, "category": source, "turns": user_turns[:max_turns]})
    if sources and (missing := sorted(sources - set(by_source))):
        raise SpecBlockError(f"{', '.join(map(str, paths))} hold no held-out conversations of {', '.join(missing)}")
    return round_robin([rows for _, rows in sorted(by_source.items())])


def _heldout_conversations(path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(id, source, user turns) of each held-out conversation of a regen directory or prompt file."""
    if path.is_dir():
        for row in answer_rows(path):
            if row.get("split") == "heldout":
                yield str(row["id"]), row["source"], [m["content"] for m in row["messages"] if m["role"] == "user"]
        return
    for conv in read_conversations(path):
        if conv.heldout and conv.user_turns():
            yield conv.id, conv.source, [m["content"] for m in conv.messages if m["role"] == "user"]
