"""Helpers shared by the benchmark scripts (the machine description now lives in the package)."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from specblock.bench.machine import machine_description
from specblock.drafters.checkpoint import read_config

__all__ = ["heldout_evaluations", "kept_drafters", "machine_description", "run_header"]


def run_header() -> dict:
    """What every result file starts with: the command, the UTC date, the machine and its CPU."""
    from specblock.target.cpu import cpu_features

    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "cpu": cpu_features().key(),
    }


def heldout_evaluations(log: Path) -> list[dict]:
    """The entries of a `train_log.jsonl` that hold a held-out evaluation (`--eval-every`): the
    held-out accuracy per slot and the 4-deep chain tau, in logged order."""
    entries = (json.loads(line) for line in Path(log).read_text().splitlines() if line.strip())
    return [entry for entry in entries if "chain_tau4" in entry]


def kept_drafters(run: Path) -> list[tuple[int, Path]]:
    """(step, drafter directory) for each snapshot of a run, and its final drafter unless the
    last snapshot already is that step, by step."""
    found = [  # not step-N.tmp / step-N.old, which a kill inside a save can leave
        (int(p.name.removeprefix("step-")), p) for p in (run / "snapshots").glob("step-*")
        if p.name.removeprefix("step-").isdigit() and (p / "config.json").is_file()
    ]  # fmt: skip
    final = run / "drafter"
    if (final / "config.json").is_file():
        last = read_config(final)["training"]["max_steps"]
        if last not in {step for step, _ in found}:
            found.append((last, final))
    if not found:
        raise SystemExit(f"{run} holds no drafter (OUT/drafter or OUT/snapshots/step-N)")
    return sorted(found)


def method_generators(base, target: str, specs: list[str]) -> dict:
    """A generator for each `method@budget` in `specs`, all on `base`'s loaded target (a
    `SpecGenerator`): one copy of the weights however many methods are compared."""
    out = {}
    for spec in specs:
        name, _, budget = spec.partition("@")
        out[spec] = base.with_method(name, node_budget=int(budget), target_name=target)
    return out
