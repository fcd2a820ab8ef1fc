"""Drafter training speed in positions per second (issue 15, item 2), before and after.

Each configuration runs in its own process: `--code DIR` points it at a checkout of the
project (an older commit for "before"), so both sides run their own training code on the
same data, step settings and machine. Configurations are interleaved over `--rounds`.
A step is `--batch-size` sequences x `--window` positions, in micro-batches of 2; a
configuration runs 2 warm-up steps, then `--steps` timed ones.

    .venv/bin/python benchmarks/train_speed.py --data DATA --before /tmp/before --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, dataclasses
import torch
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from specblock.models.resolve import resolve_model
from specblock.target.config import ModelConfig
from specblock.training.dataset import load_sequences
from specblock.training.draft_vocab import DraftVocab
from specblock.training import trainer as T
method, precision, data, steps, batch, window = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
torch.set_num_threads(int(sys.argv[8]))
target = resolve_model("smollm2-135m")
cfg = ModelConfig.from_dir(target)
vocab = DraftVocab.load(data / "draft_vocab.safetensors")
seqs = load_sequences(data, "train")
fields = {f.name for f in dataclasses.fields(T.TrainSettings)}
extra = {"precision": precision} if "precision" in fields else {}
if precision != "float32" and not extra:
    print(json.dumps({"error": "this code has no --precision"})); sys.exit(0)
s = T.TrainSettings(method=method, batch_size=batch, micro_batch=2, window=window, **extra)
model = T.new_model(s, cfg, vocab, T.target_embeddings(target))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
objective = T.TrainingObjective(model, s)
times = []
for step in range(2 + steps):
    t = time.perf_counter()
    micro = T.step_micro_batches(seqs, vocab, s, step)
    T.accumulate_gradients(objective, micro, s, step, T.Distributed())
    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": times[2:], "positions_per_step": batch * window}))
"""


def run(code: Path, method: str, precision: str, args) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(code / "src"), method, precision, str(args.data), str(args.steps),
           str(args.batch_size), str(args.window), str(args.threads)]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(code / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code)
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise SystemExit(f"{code} {method} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the commit to compare with")
    ap.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="before:float32,after:float32,after:bfloat16",
                    help="side:precision pairs, each run for both drafters (vs before: the same precision's before "
                         "where it ran, else the first before)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pairs = [tuple(c.split(":")) for c in args.configs.split(",")]
    if not any(side == "before" for side, _ in pairs) or any(side not in ("before", "after") for side, _ in pairs):
        raise SystemExit("--configs needs side:precision pairs with side before or after, at least one before")
    configs = [(side, method, precision) for method in ("specblock", "eagle3") for side, precision in pairs]
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for side, method, precision in configs:
            code = args.before if side == "before" else args.after
            res = run(code, method, precision, args)
            rates = [res["positions_per_step"] / t for t in res["step_s"]]
            samples[(side, method, precision)] += rates
            print(f"round {r}: {side:6s} {method:9s} {precision:8s} {statistics.median(rates):7.0f} positions/s", flush=True)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    rows = []
    for method in ("specblock", "eagle3"):
        for side, m, precision in configs:
            if m != method:
                continue
            first_before = next(c for c in configs if c[0] == "before" and c[1] == m)
            before = ("before", m, precision) if ("before", m, precision) in samples else first_before
            base = statistics.median(samples[before])
            med = statistics.median(samples[(side, m, precision)])
            rows.append({"method": m, "code": side, "precision": precision, "positions_per_s": round(med, 1),
                         "min": round(min(samples[(side, m, precision)]), 1),
                         "max": round(max(samples[(side, m, precision)]), 1), "vs_before": round(med / base, 2)})  # fmt: skip
    commit = lambda p: subprocess.run(["git", "-C", str(p), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    result = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("Model name")), "?"),
        "before_commit": commit(args.before),
        "after_commit": commit(args.after),
        "settings": {"batch_size": args.batch_size, "window": args.window, "micro_batch": 2, "steps": args.steps,
                     "rounds": args.rounds, "threads": args.threads, "target": "smollm2-135m"},  # fmt: skip
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "lscpu.txt").write_text(cpu)
    lines = ["| method | code | precision | positions/s (median) | min-max | vs before |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['code']} | {r['precision']} | {r['positions_per_s']} | {r['min']}-{r['max']} | "
              f"{r['vs_before']}x |" for r in rows]  # fmt: skip
    head = [f"# Drafter training speed ({result['date']}, {result['cpu']})", "", f"`{result['command']}`", "",
            f"before = {result['before_commit']}, after = {result['after_commit']}; {args.batch_size} x {args.window} "
            f"positions a step, micro-batches of 2, {args.threads} threads, {args.steps} timed steps x {args.rounds} rounds.", ""]  # fmt: skip
    (args.out / "README.md").write_text("\n".join(head + lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
