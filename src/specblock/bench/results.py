"""The append-only results file `results.jsonl`: one row per (prompt, turn, method, run), resumable."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from specblock.bench.methods import MethodSpec
from specblock.errors import InvalidSettingError

RESULTS = "results.jsonl"
SETTINGS = "settings.json"
# Settings that change what a row means: a run with other values must not resume into the same file.
RESUME_KEYS = ("target", "dtype", "device", "temperature", "max_new_tokens", "seed")
# Timings from two CPUs or two kernel choices, or rows of two drafter sets (a trained run's
# against the shipped copy), must not share a report; a directory written before a key was
# recorded passes.
RESUME_IF_RECORDED = ("cpu", "drafters", "kernels")

Key = tuple[str, int, str, int]


def row_key(row: dict) -> Key:
    """The identity of a row: (question_id, turn, method, run); the id as JSON text so 7 != "7"."""
    return json.dumps(row["question_id"]), int(row["turn"]), str(row["method"]), int(row["run"])


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """All complete rows. A half-written last line (the process was killed) is dropped; with
    `repair` it is also cut from the file so that the next append starts on a fresh line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InvalidSettingError(f"{path}:{number} is not a JSON row; fix or remove the file") from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))  # complete JSON, only the newline missing
            if repair:
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")
        except json.JSONDecodeError:
            if repair:
                path.write_text(text[: len(text) - len(tail)], encoding="utf-8")
    return rows


class ResultsFile:
    """Appends rows (flushed one by one) and knows which keys are already done."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RESULTS
        self.rows = read_rows(self.path, repair=True)
        self.by_key = {row_key(r): r for r in self.rows}

    def done(self, key: Key) -> bool:
        return key in self.by_key

    def get(self, key: Key) -> dict | None:
        return self.by_key.get(key)

    def append(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.rows.append(row)
        self.by_key[row_key(row)] = row


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a directory measured with other settings (see RESUME_KEYS).

    On a resume the settings keep the first start's date, so a report never claims all its rows
    are from the day it was last extended; each resume's date and command go to `resumed`.
    """
    path = Path(out) / SETTINGS
    if path.is_file() and (Path(out) / RESULTS).is_file():
        old = json.loads(path.read_text())
        for key, value in [(key, old.get(key)) for key in RESUME_KEYS] + _recorded(old):
            if value != settings.get(key):
                raise InvalidSettingError(
                    f"{out} holds results with {key}={value!r}, not {settings.get(key)!r}; "
                    "use another --out directory to measure other settings"
                )
        old_flags, new_flags = old.get("reference_flags", {}), settings.get("reference_flags", {})
        for name in old_flags.keys() & new_flags.keys():
            if old_flags[name] != new_flags[name]:
                raise InvalidSettingError(
                    f"{out} holds {name} rows measured with flags {old_flags[name]}, not {new_flags[name]}; "
                    "use another --out directory, or drop that reference's rows from results.jsonl"
                )
        settings["reference_flags"] = old_flags | new_flags
        resume = {"date": settings.get("date"), "command": settings.get("command")}
        for key in RESUME_IF_RECORDED:  # unknown for the first rows: recorded for this resume only
            if key not in old and key in settings:
                resume[key] = settings.pop(key)
        settings["resumed"] = old.get("resumed", []) + [resume]
        settings["date"] = old.get("date", settings.get("date"))


def keep_resolved_budgets(specs: list[MethodSpec], rows: list[dict]) -> list[MethodSpec]:
    """On a resume, each `@auto` method keeps the node budget its `rows` (the directory's) already
    ran at. `auto` is resolved per process from a verify profile, which a new process may measure
    again (profiles are filed under the kernel choice) and resolve otherwise: the 1.5B report's
    run 3, resumed on 2026-12-07, got 12 and 8 nodes where runs 1-2 had 6, and the report would
    have pooled them."""
    ran: dict[str, int] = {}
    for row in rows:
        ran.setdefault(row["method"], row.get("node_budget"))
    return [replace(s, budget=str(ran[s.spec])) if str(s.budget).lower() == "auto" and ran.get(s.spec) is not None
            else s for s in specs]  # fmt: skip


def _recorded(old: dict) -> list[tuple[str, object]]:
    """The RESUME_IF_RECORDED values a directory's rows were measured with: its settings', or
    for a key its first start did not record yet, the first resume's that did."""
    found = []
    for key in RESUME_IF_RECORDED:
        resumes = [entry[key] for entry in old.get("resumed", []) if key in entry]
        if key in old or resumes:
            found.append((key, old[key] if key in old else resumes[0]))
    return found


def write_settings(out: Path, settings: dict) -> None:
    path = Path(out) / SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def read_settings(out: Path) -> dict:
    path = Path(out) / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else {}
