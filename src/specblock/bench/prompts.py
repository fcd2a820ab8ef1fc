"""Spec-Bench question files: one JSON object per line with `question_id`, `category`, `turns`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specblock.errors import InvalidSettingError

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
REPORT_CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class Prompt:
    """One question: its report category, original label, id and user turns (1 or more)."""

    category: str
    label: str
    question_id: int | str
    turns: tuple[str, ...]


def report_category(label: str) -> str:
    """The 8 MT-bench labels are reported together as `mt_bench`; any other label as itself."""
    return "mt_bench" if label in MT_BENCH else label


def read_questions(path: Path) -> list[Prompt]:
    """Every question of the file, in file order; a missing `question_id` becomes the line number."""
    path = Path(path)
    if not path.is_file():
        raise InvalidSettingError(f"data file {path} does not exist")
    out: list[Prompt] = []
    seen: set = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSettingError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        turns = row.get("turns") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("category"), str) or not _valid_turns(turns):
            raise InvalidSettingError(f"{path}:{number} needs a string `category` and a list of string `turns`")
        qid = row.get("question_id", number)
        if qid in seen:
            raise InvalidSettingError(f"{path}:{number} repeats question_id {qid!r}")
        seen.add(qid)
        out.append(Prompt(report_category(row["category"]), row["category"], qid, tuple(turns)))
    if not out:
        raise InvalidSettingError(f"data file {path} holds no questions")
    return out


def load_prompts(path: Path, per_category: int) -> list[Prompt]:
    """The first `per_category` questions (file order) of each report category.

    The Spec-Bench categories come in report order; the labels of any other file follow in
    the order they first appear.
    """
    if per_category < 1:
        raise InvalidSettingError(f"--per-category must be at least 1, got {per_category}")
    taken: dict[str, list[Prompt]] = {}
    for prompt in read_questions(path):
        group = taken.setdefault(prompt.category, [])
        if len(group) < per_category:
            group.append(prompt)
    order = [c for c in REPORT_CATEGORIES if c in taken] + [c for c in taken if c not in REPORT_CATEGORIES]
    return [p for c in order for p in taken[c]]


def category_order(categories: set[str] | list[str]) -> list[str]:
    """Report order: the Spec-Bench categories first, then the others alphabetically."""
    present = set(categories)
    return [c for c in REPORT_CATEGORIES if c in present] + sorted(present - set(REPORT_CATEGORIES))


def _valid_turns(turns: object) -> bool:
    return isinstance(turns, list) and len(turns) > 0 and all(isinstance(t, str) for t in turns)
