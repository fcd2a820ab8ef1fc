"""The scaling curve a run's own training log already holds: held-out chain tau against training
tokens (issue 15, item 4), with no snapshot, data or target at hand.

`specblock train --eval-every N` logs, every N steps, the teacher-forced held-out accuracy and
chain tau (1 + sum over d = 1..4 of P(depths 1..d right), each P estimated as the product of the
per-depth accuracies) on the run's held-out crops. This
reads those rows from committed `train_log.jsonl` files and plots them against training tokens
(step x positions per step). It measures nothing: the tree tau that `scaling_curve.py` adds needs
the snapshots. The last point can be set beside each drafter's calibrated tree tau at `--nodes`
(its shipped `config.json`), measured on other prompts by real decoding: a different quantity,
drawn as its own marker.

    .venv/bin/python benchmarks/scaling_from_train_logs.py --out DIR \
        --log specblock=RUN/train_log.jsonl --log eagle3=RUN/train_log.jsonl \
        [--config specblock=CONFIG.json --config eagle3=CONFIG.json --nodes 16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks_common import heldout_evaluations, run_header


def eval_rows(log: Path) -> list[dict]:
    """The held-out evaluations of one training log, in step order."""
    rows = []
    for row in heldout_evaluations(log):
        if "positions_per_step" not in row:
            sys.exit(f"{log}: the evaluation at step {row['step']} has no positions_per_step, so no training tokens")
        rows.append({"step": row["step"], "training_tokens": row["step"] * row["positions_per_step"],
                     "heldout_accuracy": row["heldout_accuracy"], "chain_tau4": row["chain_tau4"]})  # fmt: skip
    if not rows:
        sys.exit(f"{log} holds no held-out evaluation (train with --eval-every)")
    return rows


def calibrated_tau(config: Path, nodes: int) -> float:
    calibration = json.loads(config.read_text()).get("calibration")
    if not calibration or nodes not in calibration["budgets"]:
        sys.exit(f"{config}: no calibration at {nodes} nodes")
    return calibration["tau"][calibration["budgets"].index(nodes)]


def pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            sys.exit(f"{flag} wants NAME=PATH, got {value!r}")
        out[name] = Path(path)
    return out


def plot(path: Path, curves: dict[str, list[dict]], endpoints: dict[str, float], nodes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, rows in curves.items():
        x = [r["training_tokens"] for r in rows]
        (line,) = ax.plot(x, [r["chain_tau4"] for r in rows], marker="o", label=f"{name}: chain tau (held-out, teacher-forced)")
        if name in endpoints:
            ax.plot([x[-1]], [endpoints[name]], marker="*", markersize=14, linestyle="none", color=line.get_color(),
                    label=f"{name}: tree tau @ {nodes} nodes (calibration, decoding)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("tau")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", action="append", required=True, help="NAME=train_log.jsonl (repeatable)")
    parser.add_argument("--config", action="append", default=[], help="NAME=config.json with a calibration (repeatable)")
    parser.add_argument("--nodes", type=int, default=16, help="the calibration budget set beside the last point")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves = {name: eval_rows(log) for name, log in pairs(args.log, "--log").items()}
    endpoints = {name: calibrated_tau(cfg, args.nodes) for name, cfg in pairs(args.config, "--config").items()}
    args.out.mkdir(parents=True, exist_ok=True)
    command = run_header()["command"]
    (args.out / "scaling.json").write_text(json.dumps({"command": command, "curves": curves, "calibrated_tree_tau": endpoints,
                                                       "nodes": args.nodes}, indent=1) + "\n")  # fmt: skip
    lines = ["| drafter | step | training tokens | held-out accuracy, depths 1-4 | chain tau |", "|---|---|---|---|---|"]
    for name, rows in curves.items():
        lines += [f"| {name} | {r['step']:,} | {r['training_tokens']:,} | {', '.join(f'{a:.3f}' for a in r['heldout_accuracy'])} "
                  f"| {r['chain_tau4']:.2f} |" for r in rows]  # fmt: skip
    lines += ["", f"Calibrated tree tau at {args.nodes} nodes (last step): "
              + (", ".join(f"{k} {v:.2f}" for k, v in endpoints.items()) or "none given")]  # fmt: skip
    (args.out / "scaling.md").write_text(f"`{command}`\n\n" + "\n".join(lines) + "\n")
    plot(args.out / "scaling.png", curves, endpoints, args.nodes)
    print(f"wrote {args.out}/scaling.{{json,md,png}}")


if __name__ == "__main__":
    main()
