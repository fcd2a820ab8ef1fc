"""tau and speedup of drafting methods over plain decoding on Spec-Bench prompts (not a test).

    .venv/bin/python benchmarks/methods_speed.py --target qwen2.5-coder-1.5b \
        --methods vanilla,lookup,draft-model --per-category 1 --max-new-tokens 64
    .venv/bin/python benchmarks/methods_speed.py --methods vanilla,specblock@59,eagle3@59,specblock@auto,eagle3@auto \
        --per-category 5

A method is `name[@budget]` (budget: a node count or `auto`); `--drafters
specblock=DIR,eagle3=DIR` replaces the shipped drafters.

Every method runs on the same prompt back to back (interleaved), greedy, and its output is
checked against vanilla's token for token. tau = new tokens / target forwards (prefill
counted); tokens/s = new tokens / request wall time (prefill included); speedup = a
method's pooled tokens/s / vanilla's, same engine, dtype, prompts and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

import specblock  # noqa: F401  (sets the OpenMP wait policy before torch loads)

from specblock import SpecGenerator

from benchmarks_common import machine_description
from engine_speed import CATEGORIES, load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--methods", default="vanilla,lookup")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/eval/spec_bench_question.jsonl")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--drafters", default="", help="method=DIR,... trained drafter checkpoints to use")
    args = ap.parse_args()
    methods = args.methods.split(",")
    drafter_dirs = dict(item.split("=", 1) for item in args.drafters.split(",") if item)
    if methods[0] != "vanilla":
        sys.exit("the first method must be vanilla (the reference for speedup and exactness)")
    out = args.out or Path(__file__).parent / "results" / f"methods_{args.target}"

    vanilla = SpecGenerator.load(args.target, method="vanilla", dtype=args.dtype)
    gens = {}
    for spec in methods:
        name, _, budget = spec.partition("@")
        gens[spec] = vanilla if spec == "vanilla" else vanilla.with_method(
            name, target_name=args.target, node_budget=budget or None, drafter=drafter_dirs.get(name)
        )  # fmt: skip
    tokenizer = gens["vanilla"].tokenizer
    for g in gens.values():
        g.generate("Say hello.", max_new_tokens=8)  # warm-up
    rows = []
    prompts = load_prompts(args.data, args.per_category)
    for i, (cat, text) in enumerate(prompts):
        ids = tokenizer.encode(text)
        reference = None
        for m, g in gens.items():
            r = g.generate(input_ids=ids, max_new_tokens=args.max_new_tokens)
            reference = r.token_ids if m == "vanilla" else reference
            row = {"method": m, "category": cat, "prompt_index": i, "new_tokens": r.new_tokens,
                   "iterations": r.iterations, "wall_s": r.wall_s, "drafter_forwards": r.drafter_forwards,
                   "draft_ms_per_iteration": r.draft_ms_per_iteration, "target_ms_per_iteration": r.target_ms_per_iteration,
                   "identical_to_vanilla": r.token_ids == reference}  # fmt: skip
            rows.append(row)
            print(f"[{i + 1}/{len(prompts)}] {cat:14s} {m:12s} tau {r.tau:4.2f} {r.tokens_per_s:6.2f} tok/s "
                  f"same={row['identical_to_vanilla']}", flush=True)  # fmt: skip

    summary = summarise(rows, methods)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "target": args.target, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
        "node_budgets": {m: g.node_budget for m, g in gens.items()},
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    text = render(meta, summary, methods)
    out.parent.joinpath(out.name + ".md").write_text(text)
    print(text)


def pooled(rows: list[dict]) -> dict:
    tokens = sum(r["new_tokens"] for r in rows)
    iters = sum(r["iterations"] for r in rows)
    return {
        "tau": tokens / iters,
        "tokens_per_s": tokens / sum(r["wall_s"] for r in rows),
        "drafter_forwards_per_iteration": sum(r["drafter_forwards"] for r in rows) / max(iters - len(rows), 1),
        "draft_ms_per_iteration": sum(r["draft_ms_per_iteration"] * (r["iterations"] - 1) for r in rows)
        / max(iters - len(rows), 1),
        "target_ms_per_iteration": sum(r["target_ms_per_iteration"] * (r["iterations"] - 1) for r in rows)
        / max(iters - len(rows), 1),
        "all_identical_to_vanilla": all(r["identical_to_vanilla"] for r in rows),
    }


def summarise(rows: list[dict], methods: list[str]) -> dict:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["category"])].append(r)
        groups[(r["method"], "all")].append(r)
    out: dict[str, dict] = {}
    for (m, cat), rs in groups.items():
        out.setdefault(m, {})[cat] = pooled(rs)
    for m in methods:
        for cat, entry in out[m].items():
            entry["speedup"] = entry["tokens_per_s"] / out["vanilla"][cat]["tokens_per_s"]
    return out


def render(meta: dict, summary: dict, methods: list[str]) -> str:
    cats = [c for c in (*CATEGORIES, "all") if c in summary["vanilla"]]
    lines = [
        f"# Drafting methods on {meta['target']} ({meta['dtype']}), batch 1, greedy",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- node budgets: {meta['node_budgets']}; at most {meta['max_new_tokens']} new tokens",
        "- tau = new tokens / target forwards (prefill counted as one), pooled; tokens/s = new tokens / "
        "request wall time (prefill included), pooled; speedup = tokens/s / vanilla tokens/s on the same prompts",
        "",
        "| method | category | tau | tokens/s | speedup | drafter forwards / iteration | drafter ms / iteration "
        "| target ms / iteration | output = vanilla |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        for c in cats:
            e = summary[m][c]
            lines.append(
                f"| {m} | {c} | {e['tau']:.2f} | {e['tokens_per_s']:.2f} | {e['speedup']:.2f}x | "
                f"{e['drafter_forwards_per_iteration']:.2f} | {e['draft_ms_per_iteration']:.1f} | "
                f"{e['target_ms_per_iteration']:.1f} | {'yes' if e['all_identical_to_vanilla'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
