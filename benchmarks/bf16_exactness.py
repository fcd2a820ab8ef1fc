"""How often bf16 speculative decoding departs from plain bf16 decoding, and how close the target's
top-2 logits were where it did (design §11a: in bf16 a departure on a near-tie is rounding noise).

Each method decodes Spec-Bench questions greedily in bf16; its output is compared with plain bf16
decoding through the same engine. At the first differing token, the target (run plainly on the
common prefix) gives its top-2 logit gap. Writes a JSON and a Markdown table (not a test).

    python benchmarks/bf16_exactness.py --per-category 2 --max-new-tokens 128 --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks_common import method_generators, run_header

from specblock.api import SpecGenerator
from specblock.bench.prompts import load_prompts
from specblock.target.kernels import kernel_table
from specblock.target.runner import TargetRunner


def top2_gap(gen: SpecGenerator, ids: list[int]) -> float:
    """The target's top-1 minus top-2 logit after `ids`, decoded plainly."""
    runner = TargetRunner(gen.target)
    logits = runner.prefill(ids, len(ids) + 2, capture=False).logits[0]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--data", default="../shared/data/eval/spec_bench_question.jsonl")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--methods", default="lookup@10,specblock@16,eagle3@16")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    base = SpecGenerator.load(args.target, "vanilla", dtype="bfloat16")
    methods = method_generators(base, args.target, args.methods.split(","))
    prompts = load_prompts(Path(args.data), per_category=args.per_category)
    rows = []
    for prompt in prompts:
        ids = base.tokenizer.encode(prompt.turns[0])
        want = base.generate(input_ids=ids, max_new_tokens=args.max_new_tokens).token_ids
        for spec, gen in methods.items():
            got = gen.generate(input_ids=ids, max_new_tokens=args.max_new_tokens).token_ids
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            if first is None and len(got) != len(want):
                first = min(len(got), len(want))
            row = {"category": prompt.category, "question_id": prompt.question_id, "method": spec,
                   "tokens": len(want), "equal": first is None, "first_difference": first}  # fmt: skip
            if first is not None:
                row["top2_gap"] = round(top2_gap(base, ids + want[:first]), 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for spec in methods:
        mine = [r for r in rows if r["method"] == spec]
        summary[spec] = {"equal": sum(r["equal"] for r in mine), "prompts": len(mine),
                         "gaps": [r["top2_gap"] for r in mine if not r["equal"]]}  # fmt: skip
    record = {
        **run_header(),
        "bf16_kernel_plan": vars(kernel_table()["bfloat16"]), "summary": summary, "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_exactness.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# bf16 speculative vs plain bf16 decoding ({args.target})", "",
             f"- command: `{record['command']}`", f"- date: {record['date']}", f"- machine: {record['machine']}",
             f"- CPU: {record['cpu']}", "", "| method | outputs equal to plain bf16 | top-2 logit gaps at the first difference |",
             "|---|---|---|"]  # fmt: skip
    for spec, s in summary.items():
        gaps = ", ".join(f"{g:.3f}" for g in sorted(s["gaps"])) or "-"
        lines.append(f"| {spec} | {s['equal']}/{s['prompts']} | {gaps} |")
    (args.out / "bf16_exactness.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
