"""Engine speed on real Spec-Bench prompts: our plain decoding (fp32, bf16) and prompt lookup
against Hugging Face `generate` and llama.cpp, all in one interleaved run (not a test).

    .venv/bin/python benchmarks/engine_speed.py --per-category 1 --max-new-tokens 128

llama.cpp needs `pip install llama-cpp-python==0.3.36` (compiles for ~10 minutes; kept out
of setup and CI); without it its rows are skipped. The reference engines run in child
processes with default OpenMP settings (src/specblock/bench/reference_engines.py). tokens/s = new tokens / wall time of the
whole request, prefill included; tau = new tokens / target forwards (prefill counted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import specblock  # noqa: F401  (sets the OpenMP wait policy before torch loads)

from specblock import SpecGenerator
from specblock.models.fetch import gguf_file, model_dir

from benchmarks_common import machine_description
from specblock.bench.reference_engines import ReferenceProcess

CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


def load_prompts(path: Path, per_category: int) -> list[tuple[str, str]]:
    """First `per_category` questions of each of the 6 report categories (turn 1 only)."""
    taken: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        cat = "mt_bench" if row["category"] in MT_BENCH else row["category"]
        if len(taken[cat]) < per_category:
            taken[cat].append((cat, row["turns"][0]))
    return [p for c in CATEGORIES for p in taken[c]]


class Ours:
    def __init__(self, name: str, gen: SpecGenerator) -> None:
        self.name = name
        self.gen = gen

    def run(self, ids: list[int], max_new: int) -> dict:
        r = self.gen.generate(input_ids=ids, max_new_tokens=max_new)
        return {"new_tokens": r.new_tokens, "wall_s": r.wall_s, "iterations": r.iterations, "token_ids": r.token_ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/eval/spec_bench_question.jsonl")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_speed_smollm2")
    ap.add_argument("--skip", default="", help="comma-separated runner names to leave out")
    args = ap.parse_args()

    plain = {dtype: SpecGenerator.load("smollm2-135m", method="vanilla", dtype=dtype) for dtype in ("float32", "bfloat16")}
    runners = [Ours("specblock-vanilla-fp32", plain["float32"]), Ours("specblock-vanilla-bf16", plain["bfloat16"]),
               Ours("specblock-lookup-fp32", plain["float32"].with_method("lookup")),  # same weights, no second copy
               Ours("specblock-lookup-bf16", plain["bfloat16"].with_method("lookup"))]  # fmt: skip
    tokenizer = runners[0].gen.tokenizer
    skip = set(filter(None, args.skip.split(",")))
    references = [("hf-generate-fp32", "hf", str(model_dir("smollm2-135m")), str(tokenizer.hf.eos_token_id)),
                  ("llama.cpp-q4_1", "llama.cpp", str(gguf_file("smollm2-135m")))]  # fmt: skip
    for name, kind, *engine_args in references:
        if name in skip:
            continue
        try:
            runners.append(ReferenceProcess(name, kind, *engine_args))
        except RuntimeError as exc:
            print(f"{exc}: its rows are skipped", file=sys.stderr)
    runners = [r for r in runners if r.name not in skip]

    prompts = load_prompts(args.data, args.per_category)
    warm = tokenizer.encode("Say hello.")
    for r in runners:
        r.run(warm, 8)
    rows = []
    for i, (cat, text) in enumerate(prompts):
        ids = tokenizer.encode(text)
        for r in runners:  # interleaved: every method on the same prompt back to back
            res = r.run(ids, args.max_new_tokens)
            res.update(runner=r.name, category=cat, prompt_index=i, prompt_tokens=len(ids))
            rows.append(res)
            print(f"[{i + 1}/{len(prompts)}] {cat:14s} {r.name:24s} {res['new_tokens']:4d} tok {res['new_tokens'] / res['wall_s']:6.1f} tok/s", flush=True)

    summary = summarise(rows)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "max_new_tokens": args.max_new_tokens,
        "prompts": len(prompts),
        "definitions": "tokens/s = new tokens / request wall time incl. prefill (pooled over prompts); "
        "tau = new tokens / target forwards incl. prefill (pooled); speedup = tokens/s / specblock-vanilla-fp32 tokens/s",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.pop("token_ids", None)
    args.out.parent.joinpath(args.out.name + ".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    args.out.parent.joinpath(args.out.name + ".md").write_text(render(meta, summary))
    print(render(meta, summary))


def summarise(rows: list[dict]) -> dict:
    by_runner: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_runner[row["runner"]].append(row)
    base = by_runner.get("specblock-vanilla-fp32")
    base_tps = sum(r["new_tokens"] for r in base) / sum(r["wall_s"] for r in base) if base else None
    out = {}
    for name, rs in by_runner.items():
        tokens = sum(r["new_tokens"] for r in rs)
        wall = sum(r["wall_s"] for r in rs)
        entry = {"tokens_per_s": tokens / wall, "new_tokens": tokens, "wall_s": wall,
                 "median_prompt_tokens_per_s": statistics.median(r["new_tokens"] / r["wall_s"] for r in rs)}  # fmt: skip
        if "iterations" in rs[0]:
            entry["tau"] = tokens / sum(r["iterations"] for r in rs)
        if base_tps:
            entry["speedup_vs_vanilla_fp32"] = entry["tokens_per_s"] / base_tps
        out[name] = entry
    return out


def render(meta: dict, summary: dict) -> str:
    lines = [
        "# Engine speed: SmolLM2-135M-Instruct, batch 1, greedy",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- {meta['prompts']} Spec-Bench prompts (turn 1), at most {meta['max_new_tokens']} new tokens",
        f"- {meta['definitions']}",
        "",
        "| runner | tokens/s | median per prompt | tau | speedup vs our fp32 vanilla |",
        "|---|---|---|---|---|",
    ]
    for name, e in summary.items():
        tau = f"{e['tau']:.2f}" if "tau" in e else "-"
        sp = f"{e.get('speedup_vs_vanilla_fp32', float('nan')):.2f}x"
        lines.append(f"| {name} | {e['tokens_per_s']:.1f} | {e['median_prompt_tokens_per_s']:.1f} | {tau} | {sp} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
