"""What exact verification costs: the kernel table's row-invariant choice against plain calls.

The table's exact choice (on the AMX Xeon: bf16 products of verify and decoding forwards in
fixed 16-row chunks, `KernelPlan.chunk_rows`; fp32 products with a lone row padded to two,
`KernelPlan.min_rows`; both with the layout-invariant verify attention) against plain calls:
the same kernel, one unpadded call per product, with scaled-dot-product attention (the plan
marked not row-invariant), on one loaded target each. The cost is both parts together. For
each prompt, every (kernels, method) pair decodes in turn, in a rotating order, so both kernel
choices see the same machine state. Per kernel choice it reports decoding speed, prefill time,
and how many outputs of each speculative method equal plain decoding through the same kernels
token for token. Writes JSON and Markdown (not a test).

    python benchmarks/exact_kernels.py --target qwen2.5-coder-1.5b --methods specblock@6,eagle3@6 --out DIR
    python benchmarks/exact_kernels.py --dtype float32 --methods specblock@16,eagle3@16 --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from benchmarks_common import method_generators, run_header

from specblock.api import SpecGenerator
from specblock.bench.prompts import load_prompts
from specblock.models.resolve import resolve_model
from specblock.target.transformer import Transformer, load_safetensors_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--data", default="../shared/data/eval/spec_bench_question.jsonl")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--methods", default="specblock@6,eagle3@6")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    chosen = SpecGenerator.load(args.target, "vanilla", dtype=args.dtype)
    if not chosen.target.batch_invariant:
        raise SystemExit(f"the kernel table found no exact kernels here ({chosen.target.kernels}): nothing to compare")
    # the same backend, one unpadded call per product, scaled-dot-product attention
    plain_plan = replace(chosen.target.plan, min_rows=1, chunk_rows=0, invariant=False, attention_rows=1)
    weights = load_safetensors_dir(resolve_model(args.target), dtype, "cpu")
    plain_target = Transformer(chosen.target.cfg, weights, dtype, "cpu", plan=plain_plan)
    plain = SpecGenerator(plain_target, chosen.tokenizer, chosen.drafter, "vanilla", 0, args.target)
    methods = args.methods.split(",")
    kernels = {name: {"vanilla": gen} | method_generators(gen, args.target, methods)
               for name, gen in (("exact", chosen), ("plain", plain))}
    describe = {name: gens["vanilla"].target.plan.describe() for name, gens in kernels.items()}
    pairs = [(k, m) for k in kernels for m in ["vanilla", *methods]]
    rows = []
    prompts = load_prompts(Path(args.data), per_category=args.per_category)
    for i, prompt in enumerate(prompts):
        ids = chosen.tokenizer.encode(prompt.turns[0])
        outputs = {}
        for k, m in pairs[i % len(pairs) :] + pairs[: i % len(pairs)]:  # rotate who goes first
            result = kernels[k][m].generate(input_ids=ids, max_new_tokens=args.max_new_tokens)
            outputs[(k, m)] = result.token_ids
            rows.append({"question_id": prompt.question_id, "category": prompt.category, "kernels": k, "method": m,
                         "new_tokens": result.new_tokens, "tau": round(result.tau, 3),
                         "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
                         "prefill_s": round(result.prefill_s, 4)})  # fmt: skip
        for row in rows[-len(pairs) :]:
            row["equals_vanilla"] = outputs[(row["kernels"], row["method"])] == outputs[(row["kernels"], "vanilla")]
        print(f"{i + 1}/{len(prompts)} {prompt.category}", flush=True)
    summary = []
    for k, m in pairs:
        mine = [r for r in rows if r["kernels"] == k and r["method"] == m]
        summary.append({"kernels": k, "method": m,
                        "decode_tokens_per_s": round(statistics.mean(r["decode_tokens_per_s"] for r in mine), 3),
                        "prefill_s": round(statistics.mean(r["prefill_s"] for r in mine), 4),
                        "tau": round(statistics.mean(r["tau"] for r in mine), 3),
                        "equals_vanilla": sum(r["equals_vanilla"] for r in mine), "prompts": len(mine)})  # fmt: skip
    ratios = {}  # per prompt, exact over plain, then the geometric mean
    for m in ["vanilla", *methods]:
        per = [a["decode_tokens_per_s"] / b["decode_tokens_per_s"]
               for a in rows if a["kernels"] == "exact" and a["method"] == m
               for b in rows if b["kernels"] == "plain" and b["method"] == m and b["question_id"] == a["question_id"]]  # fmt: skip
        ratios[m] = round(statistics.geometric_mean(per), 3)
    header = run_header() | {"target": args.target, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
                             "kernels": describe}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exact_kernels.json").write_text(json.dumps(header | {"summary": summary, "exact_over_plain": ratios, "rows": rows}, indent=1))
    lines = [f"# Exact {args.dtype} kernels against plain ones: {args.target}", "",
             *(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in header.items()), "",
             "| kernels | method | decode tokens/s | prefill s | tau | output = plain decoding (same kernels) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for s in summary:
        lines.append(f"| {s['kernels']} | {s['method']} | {s['decode_tokens_per_s']:.2f} | {s['prefill_s']:.3f} | "
                     f"{s['tau']:.2f} | {s['equals_vanilla']}/{s['prompts']} |")  # fmt: skip
    lines += ["", "Decode speed, exact over plain (geometric mean of per-prompt ratios): "
              + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items())]  # fmt: skip
    (args.out / "exact_kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
