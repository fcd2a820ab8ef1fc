"""Offline replay of a stream's feedback: which arm and learning rate actually teach the drafter.

A live stream (benchmarks/adaptation_stream.py) mixes the bandit's choices with timing noise.
This replay isolates the update itself. The frozen drafter answers a stream of prompts once,
and the verifier's feedback is buffered as in serving. Then, for each (arm, lr), starting
from the original weights, every request i in turn is "the next window":
- the drafter is updated on all earlier requests, as the live updater would be;
- its reach on request i is measured before and after (paired);
- an update that lowered it is undone, weights and AdamW moments alike.
At the end, the reach on the last `--test` requests, never trained on or judged on, compares
the adapted weights with the original ones. No timing is measured: tokens/s come from the
live stream.

    .venv/bin/python benchmarks/adaptation_replay.py --category translation --skip 5 --prompts 20 \
        --arms whole,head_last_layer --lrs 1e-3,3e-4,1e-4 --out benchmarks/results/adapt_replay_translation

Writes OUT/replay.json and OUT/replay.md. The buffered feedback is cached (greedy answers
are deterministic) in --segments, by default under the ignored runs/replay_cache/.
"""

from __future__ import annotations  # noqa: I001  (specblock before torch: it sets the OpenMP wait policy)

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import specblock  # noqa: F401  (sets the OpenMP wait policy before torch loads)

import torch

from specblock import SpecGenerator
from specblock.adapt.drafter import AdaptSettings
from specblock.adapt.updates import OnlineUpdater, UpdateSettings
from specblock.bench.machine import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_stream import stream_prompts


def replay(model: torch.nn.Module, sequences: list, arm: str, lr: float, test: int, node_budget: int) -> dict:
    """One (arm, lr) pass over the stream, from the weights the model holds now."""
    updater = OnlineUpdater(model, UpdateSettings(lr=lr), node_budget)
    held_out = sequences[-test:]
    reach_before = float(updater.reach(held_out).mean())
    changes, kept = [], 0
    for i in range(2, len(sequences) - test):
        weights = updater.arm_weights(arm)
        moments = updater.optimizer_state(arm)
        before = updater.reach([sequences[i]])
        updater.update(arm, sequences[:i])
        change = float((updater.reach([sequences[i]]) - before).mean())
        changes.append(round(change, 4))
        if change < 0:
            updater.load_arm_weights(arm, weights)
            updater.load_optimizer_state(arm, moments)
        else:
            kept += 1
    return {
        "arm": arm, "lr": lr, "updates": len(changes), "kept": kept,
        "mean_next_change": round(sum(changes) / len(changes), 4), "next_changes": changes,
        "test_reach_original": round(reach_before, 4), "test_reach_adapted": round(float(updater.reach(held_out).mean()), 4),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--method", default="specblock")
    ap.add_argument("--category", required=True)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--node-budget", type=int, default=8)
    ap.add_argument("--test", type=int, default=4, help="last requests kept for the final comparison")
    ap.add_argument("--arms", default="whole,head_last_layer")
    ap.add_argument("--lrs", default="1e-3,3e-4,1e-4")
    ap.add_argument("--segments", type=Path, default=None, help="cache of the buffered feedback (default runs/replay_cache/...)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.prompts < args.test + 4:
        raise SystemExit("--prompts must leave at least 4 requests to update on besides --test")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.segments or Path(__file__).resolve().parents[1] / "runs/replay_cache" / f"replay_{args.method}_{args.category}_{args.skip}_{args.prompts}_{args.max_new_tokens}.pt"

    base = SpecGenerator.load(args.target, method="vanilla")
    gen = base.with_method(args.method, node_budget=args.node_budget, target_name=args.target)
    adaptive = gen.enable_adaptation(AdaptSettings(policy="never"))
    if cache.exists():
        adaptive.buffer.segments = torch.load(cache, weights_only=False)
    else:
        for prompt in stream_prompts(args.category, args.skip, args.prompts):
            gen.generate(prompt, max_new_tokens=args.max_new_tokens)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(adaptive.buffer.segments, cache)
    sequences = [s.to_sequence() for s in adaptive.buffer.segments if s.answer_positions() > 0]
    model = adaptive.model
    original = copy.deepcopy(model.state_dict())

    rows = []
    for arm in args.arms.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            model.load_state_dict(original)
            t0 = time.perf_counter()
            row = replay(model, sequences, arm, lr, args.test, args.node_budget)
            rows.append(row)
            print(f"{arm} lr {lr:g}: kept {row['kept']}/{row['updates']}, mean next-request change {row['mean_next_change']:+.3f}, "
                  f"held-out reach {row['test_reach_original']:.3f} -> {row['test_reach_adapted']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    settings = vars(args) | {"out": str(args.out), "segments": str(cache), "requests": len(sequences),
                             "command": "python " + " ".join(sys.argv), "machine": machine_description("cpu"),
                             "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}  # fmt: skip
    (args.out / "replay.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    lines = [f"# Adaptation replay: {args.method} on a {args.category} stream", "", f"`{settings['command']}`", "",
             f"{settings['date']}; {settings['machine']}; {len(sequences)} requests, the last {args.test} held out", "",
             "| arm | lr | kept / updates | mean reach change on the next request | held-out reach, original -> adapted |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['arm']} | {r['lr']:g} | {r['kept']} / {r['updates']} | {r['mean_next_change']:+.3f} | "
                     f"{r['test_reach_original']:.3f} -> {r['test_reach_adapted']:.3f} |")  # fmt: skip
    (args.out / "replay.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
