"""Measure a trained drafter's tau and drafting time at several node budgets and store them
as the `calibration` of its config.json, which `--node-budget auto` combines with the
target's verify-latency profile (src/specblock/budget.py).

    .venv/bin/python benchmarks/calibrate_drafter.py --method specblock --drafter DIR

Calibration prompts are never Spec-Bench evaluation prompts. For a drafter trained on `data
regen` output, `--data DIR` takes the first user turns of DIR's held-out conversations after the
first `--skip` (48: the held-out benchmark file `specblock data heldout-questions --per-source 8`
writes, and the 24 the scaling curve decodes, are among them), so the sources alternate.
Without it: training-set prompts that the issue 3 `data prepare` did not use (UltraChat and
GSM8K rows after the first 640 of the seed-0 shuffle).
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
from specblock.training.prepare import write_json
from specblock.training.regen_store import heldout_questions

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
    ap.add_argument("--data", type=Path, help="the drafter's `data regen` directory: calibrate on its held-out prompts")
    ap.add_argument("--skip", type=int, default=48, help="with --data: held-out prompts left for evaluation")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    base = SpecGenerator.load(args.target, method="vanilla")
    if args.data:
        questions = heldout_questions([args.data])[args.skip : args.skip + args.prompts]
        if len(questions) < args.prompts:
            raise SystemExit(f"{args.data} has fewer than {args.skip + args.prompts} held-out conversations")
        prompts = [[{"role": "user", "content": q["turns"][0]}] for q in questions]
        described = f"{args.prompts} held-out prompts of {args.data} (after the first {args.skip})"
    else:
        prompts = calibration_prompts(args.prompts)
        described = f"{args.prompts} unused UltraChat/GSM8K training prompts"
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
        "prompts": f"{described}, {args.max_new_tokens} new tokens, greedy",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }  # fmt: skip
    write_json(config_path, config)  # atomic: a kill mid-write must not break the drafter


if __name__ == "__main__":
    main()
