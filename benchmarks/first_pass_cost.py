"""The drafters' first pass over a long prompt (their share of a request's prefill) against the
target's prefill: on Spec-Bench's first summarization and RAG prompts (450-930 tokens)
SpecBlock's block 1 runs K = 4 slot rows per prompt position, so its first pass is 4x as many
rows as the target's prefill through 2 layers. Measured inside real generation at 4 nodes (the
first iteration's drafting time: first pass and growth; block 2 does not run at 4 nodes), a few
new tokens per prompt, median of repeats. Not a test.

To compare two versions of the code, run this once per checkout (PYTHONPATH=OTHER/src for the
other one), alternating, each with its own --label:

    python benchmarks/first_pass_cost.py --label new --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import specblock
from benchmarks_common import run_header

from specblock.api import SpecGenerator
from specblock.bench.prompts import load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eval/spec_bench_question.jsonl"))
    ap.add_argument("--categories", default="summarization,rag")
    ap.add_argument("--per-category", type=int, default=5)
    ap.add_argument("--methods", default="specblock,eagle3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", required=True, help="names this version of the code in the output file")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    wanted = args.categories.split(",")
    prompts = [p for p in load_prompts(args.data, args.per_category) if p.category in wanted]
    base = SpecGenerator.load(args.target, "vanilla", dtype="auto")
    rows = []
    for method in args.methods.split(","):
        gen = base.with_method(method, node_budget=4, target_name=args.target)
        gen.generate(prompts[0].turns[0], max_new_tokens=8)  # warm-up
        for prompt in prompts:
            runs = [gen.generate(prompt.turns[0], max_new_tokens=8) for _ in range(args.repeats)]
            row = {
                "method": method, "category": prompt.category, "question_id": prompt.question_id,
                "prompt_tokens": runs[0].prompt_tokens,
                "target_prefill_ms": round(1000 * statistics.median(r.prefill_s for r in runs), 1),
                "first_draft_ms": round(statistics.median(r.draft_ms[0] for r in runs), 1),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {**run_header(), "label": args.label, "code": str(Path(specblock.__file__).parent), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"first_pass_{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
