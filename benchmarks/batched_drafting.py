"""SpecBlock drafting in the server's batch: one block-1 forward for every request
(`SpecBlockDrafter.propose_batch`) against each request drafting alone, through the
scheduler in-process (no HTTP), modes interleaved.

    .venv/bin/python benchmarks/batched_drafting.py --out benchmarks/results/serve_zen5/batched_drafting.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_common import run_header  # noqa: E402

from specblock import SpecGenerator  # noqa: E402
from specblock.bench.prompts import load_prompts  # noqa: E402
from specblock.decoding import DecodeSettings  # noqa: E402
from specblock.drafters.specblock import SpecBlockDrafter  # noqa: E402
from specblock.serving.scheduler import BatchScheduler, Finished, Job  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "spec_bench_question.jsonl"


def run(gen: SpecGenerator, prompts: list[list[int]], max_new: int) -> dict:
    scheduler = BatchScheduler(gen.target, gen.drafter, gen.tokenizer.decode, max_batch=len(prompts), slot_capacity=4096)
    finished, done = [], threading.Event()

    def sink(event) -> None:
        if isinstance(event, Finished):
            finished.append(event)
            if len(finished) == len(prompts):
                done.set()

    eos = gen.tokenizer.eos_token_ids(gen.target.cfg)
    t0 = time.perf_counter()
    for ids in prompts:
        scheduler.submit(Job(ids, DecodeSettings(max_new_tokens=max_new, node_budget=gen.node_budget, eos_token_ids=eos),
                             sink, 600))  # fmt: skip
    engine = threading.Thread(target=scheduler.run)
    engine.start()
    done.wait()
    scheduler.stop()
    engine.join()
    c = scheduler.counters
    return {"wall_s": round(time.perf_counter() - t0, 3), "iterations": c.iterations,
            "tokens": sum(f.stats.new_tokens for f in finished), "target_ms_per_iteration": round(1000 * c.target_s / c.iterations, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--node-budget", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    gen = SpecGenerator.load("smollm2-135m", method="specblock", node_budget=args.node_budget)
    questions = [q.turns[0] for q in load_prompts(DATA, 1)][: args.requests]
    prompts = [gen.tokenizer.encode(q) for q in questions]
    batched = SpecBlockDrafter.propose_batch
    rows = []
    for r in range(args.runs):
        for mode in ("alone", "batched"):
            if mode == "alone":
                del SpecBlockDrafter.propose_batch  # the scheduler then lets each request draft alone
            try:
                rows.append({"run": r, "mode": mode, **run(gen, prompts, args.max_new_tokens)})
            finally:
                SpecBlockDrafter.propose_batch = batched
            print(rows[-1], flush=True)
    report = {**run_header(), "settings": vars(args) | {"out": str(args.out)}, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
