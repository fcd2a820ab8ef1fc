"""Held-out acceptance against training tokens, for one or more training runs (issue 15, item 4).

For every drafter a run kept (`specblock train --snapshot-every N` writes OUT/snapshots/step-N;
OUT/drafter is the last step) this measures:
- chain tau: the trainer's teacher-forced estimate, 1 + sum over d = 1..4 of P(depths 1..d
  right), on `--sequences` held-out sequences of the data directory (no target forward);
- tree tau at `--nodes` nodes: real greedy speculative decoding (fp32 target, so the output is
  the target's own; `--dtype bfloat16` for a large target: its verification is
  batch-invariant, so the output is the bf16 target's own) of the first user turn of
  `--prompts` held-out conversations, taken in turn from each source; tau = new tokens /
  target forwards, the prefill counted (pooled).

Training tokens = step x batch size x window: the positions the steps' crops span (an upper
bound: a shorter conversation gives a shorter crop, and the prompt positions of a crop carry
no loss). The points are snapshots of one run, whose learning rate decays to 0 only at its
last step: a curve along one schedule, not one fully trained drafter per budget. Writes
scaling.json, scaling.md and scaling.png under --out after every drafter; a rerun with the
same settings keeps the drafters already measured there and measures the rest.

    .venv/bin/python benchmarks/scaling_curve.py --data DATA --run RUN_SPECBLOCK --run RUN_EAGLE3 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchmarks_common import kept_drafters, run_header

from specblock import SpecGenerator
from specblock.adapt.updates import vocab_of
from specblock.drafters.checkpoint import load_drafter, read_config
from specblock.training.dataset import load_sequences
from specblock.training.regen_store import heldout_questions
from specblock.training.trainer import TrainSettings, evaluate


def tree_tau(generator: SpecGenerator, prompts: list[dict], max_new_tokens: int) -> dict:
    tokens = forwards = 0
    per_source: dict[str, list[int]] = {}
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt["turns"][0]}]
        result = generator.generate(messages=messages, max_new_tokens=max_new_tokens)
        tokens += result.new_tokens
        forwards += result.iterations
        counts = per_source.setdefault(prompt["category"], [0, 0])
        counts[0] += result.new_tokens
        counts[1] += result.iterations
    return {
        "tree_tau": round(tokens / forwards, 4),
        "tree_tau_per_source": {s: round(t / f, 4) for s, (t, f) in sorted(per_source.items())},
    }


def measure_run(
    run: Path, args, target: SpecGenerator, prompts: list[dict], heldout, done: Callable[[dict], None],
    measured: set[tuple[str, int]],
) -> None:  # fmt: skip
    """Measure every kept drafter of a run but the (run, step) pairs `measured`; `done` gets
    each row as soon as it is measured."""
    for step, drafter_dir in kept_drafters(run):
        if (str(run.resolve()), step) in measured:
            continue
        config = read_config(drafter_dir)
        training = config["training"]
        method = config["method"]
        settings = TrainSettings(method=method, window=training["window"], micro_batch=training["micro_batch"],
                                 eval_sequences=args.sequences, precision="float32")  # fmt: skip
        net = load_drafter(drafter_dir, target.target.cfg, target.target.embed.float(), method=method)
        t0 = time.time()
        row = {"run": str(run), "method": method, "step": step,
               "training_tokens": step * training["batch_size"] * training["window"]}  # fmt: skip
        row |= evaluate(net, heldout, vocab_of(net), settings)  # the drafter's own vocabulary
        generator = target.with_method(method, drafter=drafter_dir, node_budget=args.nodes, target_name=args.target)
        row |= tree_tau(generator, prompts, args.max_new_tokens)
        row["measure_s"] = round(time.time() - t0, 1)
        print(
            f"{method} step {step}: chain tau {row.get('chain_tau4')} tree tau@{args.nodes} {row['tree_tau']}",
            flush=True,
        )
        done(row)


def write_markdown(path: Path, header: dict, rows: list[dict], nodes: int) -> None:
    lines = [
        "# Held-out acceptance against training tokens",
        "",
        f"`{header['command']}`, {header['date']}, {header['machine']}.",
        "",
        f"| method | step | training tokens | chain tau (4 deep, teacher-forced) | tree tau @ {nodes} nodes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['step']} | {r['training_tokens']:,} | {r.get('chain_tau4', '')} | {r['tree_tau']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list[dict], nodes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        x = [r["training_tokens"] for r in mine]
        axes[0].plot(x, [r.get("chain_tau4") for r in mine], marker="o", label=method)
        axes[1].plot(x, [r["tree_tau"] for r in mine], marker="o", label=method)
    axes[0].set_title("chain tau (4 deep, teacher-forced)")
    axes[1].set_title(f"tree tau at {nodes} nodes (greedy decoding)")
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the minor labels overlap
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)  # plotted again after every drafter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the `data regen` directory the runs trained on")
    ap.add_argument("--run", type=Path, action="append", required=True, help="a `specblock train --out` directory")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--sequences", type=int, default=64, help="held-out sequences for the chain tau")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the target's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header = run_header()
    target = SpecGenerator.load(args.target, "vanilla", dtype=args.dtype)
    prompts = heldout_questions([args.data])[: args.prompts]  # the sources in turn
    if not prompts:
        raise SystemExit(f"{args.data} holds no held-out conversations")
    heldout = load_sequences(args.data, "heldout")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "threads"}
    settings["run"] = [str(r.resolve()) for r in args.run]
    rows: list[dict] = []
    earlier = args.out / "scaling.json"
    if earlier.exists():
        measured_before = json.loads(earlier.read_text())
        if measured_before.get("settings") == settings:
            rows = measured_before["rows"]  # a rerun: keep what the killed one measured
            print(f"kept {len(rows)} drafter(s) measured earlier in {earlier}")
        else:
            print(f"{earlier} was measured with other settings: measuring every drafter again")
    measured = {(str(Path(r["run"]).resolve()), r["step"]) for r in rows}

    def write(row: dict) -> None:  # all three files after every drafter: a killed run keeps what it measured
        rows.append(row)
        result = header | {
            "settings": settings,
            "runs": [str(r) for r in args.run],
            "prompts": [p["question_id"] for p in prompts],
            "rows": rows,
        }
        (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(args.out / "scaling.md", header, rows, args.nodes)
        plot(args.out / "scaling.png", rows, args.nodes)

    for run in args.run:
        measure_run(run, args, target, prompts, heldout, write, measured)
    print(f"wrote {args.out}/scaling.json, scaling.md, scaling.png")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
