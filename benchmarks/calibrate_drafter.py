"""Measure a trained drafter's tau and drafting time at several node budgets and store them
as the `calibration` of its config.json, which `--node-budget auto` combines with the
target's verify-latency profile (src/specblock/budget.py).

    .venv/bin/python benchmarks/calibrate_drafter.py --method specblock --drafter DIR

Calibration prompts are training-set prompts that `data prepare` did not use (UltraChat and
GSM8K rows after the first 640 of the seed-0 shuffle), never Spec-Bench evaluation prompts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

import specblock  # noqa: F401  (sets the OpenMP wait policy before torch loads)

from specblock import SpecGenerator
from specblock.training.conversations import read_conversations

from benchmarks_common import machine_description

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def calibration_prompts(n: int, used: int = 640) -> list[list[dict]]:
    convs = [c for c in read_conversations(SHARED / "regen/smollm2-135m.jsonl") if c.source in ("ultrachat", "gsm8k")]
    random.Random(0).shuffle(convs)  # the order `data prepare --shuffle-seed 0` used
    return [c.first_user_turn() for c in convs[used : used + n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--drafter", type=Path, required=True)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--budgets", default="4,8,12,16,24,59")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    base = SpecGenerator.load(args.target, method="vanilla")
    prompts = calibration_prompts(args.prompts)
    taus, draft_ms = [], []
    for budget in budgets:
        gen = base.with_method(args.method, node_budget=budget, drafter=args.drafter, target_name=args.target)
        gen.generate("Say hello.", max_new_tokens=8)
        tokens = forwards = 0
        draft_s = iterations = 0.0
        for messages in prompts:
            r = gen.generate(messages=messages, max_new_tokens=args.max_new_tokens)
            tokens += r.new_tokens
            forwards += r.iterations
            draft_s += r.draft_ms_per_iteration * (r.iterations - 1)
            iterations += r.iterations - 1
        taus.append(round(tokens / forwards, 4))
        draft_ms.append(round(draft_s / max(iterations, 1), 3))
        print(f"budget {budget}: tau {taus[-1]:.2f}, drafter {draft_ms[-1]:.1f} ms/iteration", flush=True)
    config_path = args.drafter / "config.json"
    config = json.loads(config_path.read_text())
    config["calibration"] = {
        "budgets": budgets, "tau": taus, "draft_ms": draft_ms,
        "prompts": f"{args.prompts} unused UltraChat/GSM8K training prompts, {args.max_new_tokens} new tokens, greedy",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }  # fmt: skip
    config_path.write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
