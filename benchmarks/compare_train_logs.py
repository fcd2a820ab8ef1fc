"""Compare training runs step by step from their train_log.jsonl files.

Runs started with the same seed, batch size and window draw the same crops at every step, so
their logged training accuracies are paired: a difference that holds at every logged step is
the change between the runs, not batch noise. Prints a Markdown table of block 1's (or
EAGLE-3's first step's) accuracy at one slot, and each run's mean and its paired difference
from the first run over the steps all of them logged.

    python benchmarks/compare_train_logs.py --run design=/work/runs/a --run ours=/work/runs/b \
        --slot 0 --last-step 100 > comparison.md

`--heldout` prints instead each run's held-out evaluations (the trainer's fixed crops): per-slot
accuracy and the 4-deep teacher-forced chain tau, at every evaluated step in the range.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks_common import heldout_evaluations, run_header


def read_log(run: Path, slot: int) -> dict[int, float]:
    """step -> training accuracy of block 1 at `slot` (the log's first row of slot_accuracy)."""
    out = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[entry["step"]] = entry["slot_accuracy"][0][slot]
    return out


def print_heldout(names: list[str], runs: list[Path], first: int, last: int) -> None:
    """One row per (evaluated step, run): held-out accuracy per slot and chain tau."""
    print("| step | run | held-out accuracy, slots 0 / 1 / 2 / 3 | chain tau |")
    print("|---|---|---|---|")
    rows = []
    for order, (name, run) in enumerate(zip(names, runs)):
        for entry in heldout_evaluations(run / "train_log.jsonl"):
            if first <= entry["step"] <= last:
                rows.append((entry["step"], order, name, entry))
    for step, _, name, entry in sorted(rows, key=lambda r: r[:2]):
        accuracy = " / ".join(f"{a:.3f}" for a in entry["heldout_accuracy"])
        print(f"| {step} | {name} | {accuracy} | {entry['chain_tau4']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR; the first is the baseline")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--first-step", type=int, default=0)
    parser.add_argument("--last-step", type=int, default=10**9)
    parser.add_argument("--heldout", action="store_true", help="the runs' held-out evaluations instead")
    args = parser.parse_args()
    specs = [spec.partition("=") for spec in args.run]
    names, runs = [name for name, _, _ in specs], [Path(path) for _, _, path in specs]
    header = run_header()
    if args.heldout:
        print(f"Held-out evaluations. `{header['command']}`, {header['date']}, read on {header['machine']}.\n")
        print_heldout(names, runs, args.first_step, args.last_step)
        return
    logs = [read_log(run, args.slot) for run in runs]
    common = sorted(set.intersection(*(set(log) for log in logs)))
    steps = [s for s in common if args.first_step <= s <= args.last_step]
    if not steps:
        raise SystemExit("the runs share no logged step in that range")
    print(f"Training accuracy at slot {args.slot} (block 1), same crops at every step.\n")
    print(f"`{header['command']}`, {header['date']}, read on {header['machine']}.\n")
    print("| step | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{log[s]:.4f}" for log in logs) + " |")
    base = [logs[0][s] for s in steps]
    print(f"\nOver the {len(steps)} steps {steps[0]}-{steps[-1]}:\n")
    for name, log in zip(names, logs):
        values = [log[s] for s in steps]
        diffs = [v - b for v, b in zip(values, base)]
        wins = sum(d > 0 for d in diffs)
        print(f"- {name}: mean {sum(values) / len(values):.4f}; against {names[0]} {sum(diffs) / len(diffs):+.4f}, "
              f"higher at {wins} of {len(steps)} steps")  # fmt: skip


if __name__ == "__main__":
    main()
