"""Which `--spec-draft-n-max` gives llama.cpp's EAGLE-3 its best speed on this machine?

The bench's `llama.cpp-server-eagle3` row runs llama-server with our exported EAGLE-3 drafter;
a fair peer runs at its best draft length, not at one we picked. This times plain llama-server
and EAGLE-3 at each draft length on the same GGUF and Spec-Bench prompts (one per report
category, greedy), interleaved prompt by prompt, and writes tokens/s, draft counts and the
acceptance per draft token. Each prompt's replies are appended to OUT/rows.jsonl as they come, so
a killed run (or one run in short pauses of a pipeline) continues with the next prompt.

  python benchmarks/llama_eagle3_draft_max.py --target qwen2.5-coder-1.5b \
      --drafter /work/runs/qwen2.5-coder-1.5b-eagle3/drafter --out benchmarks/results/llama_eagle3_draft_max_qwen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks_common import run_header

from specblock.bench.prompts import REPORT_CATEGORIES, read_questions, report_category
from specblock.bench.reference_engines import ReferenceProcess
from specblock.bench.runner import eagle3_gguf, llama_server_binary
from specblock.models.fetch import gguf_file
from specblock.models.resolve import resolve_model
from specblock.text import ChatTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--drafter", help="EAGLE-3 drafter directory (default: the shipped one)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eval/spec_bench_question.jsonl"))
    ap.add_argument("--draft-max", default="1,2,3,4", help="comma-separated --spec-draft-n-max values")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    tokenizer = ChatTokenizer.load(resolve_model(args.target))
    firsts = {}
    for q in read_questions(args.data):
        firsts.setdefault(report_category(q.label), q)
    prompts = [firsts[c] for c in REPORT_CATEGORIES if c in firsts]
    ids = [tokenizer.encode(messages=[{"role": "user", "content": p.turns[0]}]) for p in prompts]

    base = (str(gguf_file(args.target)), str(llama_server_binary()))
    draft = str(eagle3_gguf(args.target, args.drafter))
    configs = {"plain": ()} | {
        f"eagle3 n-max {n}": ("-md", draft, "--spec-type", "draft-eagle3", "--spec-draft-n-max", n)
        for n in args.draft_max.split(",")
    }
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.is_file() else []
    if any(set(row) != {"prompt", *configs} for row in rows):
        raise SystemExit(f"{rows_path} holds other configurations: use another --out")
    done = {row["prompt"] for row in rows}
    todo = [(p, i) for p, i in zip(prompts, ids) if f"{p.label}:{p.question_id}" not in done]
    engines = {}
    try:  # every server up at once (one slot each, idle while another is timed), so prompts interleave
        for name, flags in configs.items() if todo else ():
            engines[name] = ReferenceProcess(name, "llama-server", *base, *flags)
            engines[name].run(tokenizer.encode("Say hello."), 8)  # warm-up
        for prompt, prompt_ids in todo:
            row = {"prompt": f"{prompt.label}:{prompt.question_id}"}
            row |= {name: engine.run(prompt_ids, args.max_new_tokens) for name, engine in engines.items()}
            rows.append(row)
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['prompt']} measured ({len(rows)}/{len(prompts)})", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    if len(rows) < len(prompts):
        raise SystemExit("not every prompt is measured yet")
    totals = {
        name: {key: sum(row[name].get(key, 0) for row in rows) for key in ("new_tokens", "wall_s", "draft_tokens", "draft_accepted")}
        for name in configs
    }

    plain = totals["plain"]["new_tokens"] / totals["plain"]["wall_s"]
    lines = ["| llama-server | tokens/s | vs plain | drafted | accepted | accepted per drafted |", "|---|---|---|---|---|---|"]
    for name, t in totals.items():
        t["tokens_per_s"] = t["new_tokens"] / t["wall_s"]
        rate = f"{t['draft_accepted'] / t['draft_tokens']:.2f}" if t["draft_tokens"] else "-"
        lines.append(
            f"| {name} | {t['tokens_per_s']:.1f} | {t['tokens_per_s'] / plain:.2f}x | {t['draft_tokens']} | "
            f"{t['draft_accepted']} | {rate} |"
        )
    header = run_header() | {"prompts": [f"{p.label}:{p.question_id}" for p in prompts], "draft_gguf": draft}
    (args.out / "results.json").write_text(json.dumps(header | {"totals": totals}, indent=1) + "\n")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(
        f"`{header['command']}`\n\n{header['date']}, {header['machine']}\n\n"
        f"{len(prompts)} Spec-Bench prompts ({', '.join(header['prompts'])}), {args.max_new_tokens} new tokens, greedy.\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
