"""How much of the target's text each draft-vocabulary size covers (issue 15, item 3).

The draft vocabulary holds the most frequent answer tokens of the training split. A drafted
token outside it can never be proposed, so coverage caps acceptance. For each size this
reports the share of answer tokens it covers:
- on the held-out split of a `data regen` directory (`--data`);
- per Spec-Bench category, on the target's own answers to the Spec-Bench questions (`--eval`:
  a `data regen` directory of those; evaluation only, never trained on).
It also reports what each size costs the drafter: its lm_head (hidden x size) in fp16 MB,
one per drafter.

    .venv/bin/python benchmarks/draft_vocab_coverage.py --data DATA [--eval EVAL] --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from specblock.models.resolve import resolve_model
from specblock.text import ChatTokenizer
from specblock.training.dataset import load_manifest
from specblock.training.draft_vocab import DraftVocab

SIZES = (1024, 2048, 4096, 8192, 16384, 32768)


def answer_tokens(data: Path, split: str) -> list[tuple[str, torch.Tensor]]:
    """(source, answer token ids) per conversation of a regen directory's split, in shard order."""
    out = []
    answers = sorted(data.glob("answers-*.jsonl"))
    for path in answers:
        index = path.stem.split("-")[1]
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        shard = data / f"{split}-{index}.safetensors"
        if not shard.exists():
            continue
        with safe_open(str(shard), framework="pt") as f:
            tokens, mask, offsets = f.get_tensor("tokens"), f.get_tensor("answer_mask"), f.get_tensor("offsets").tolist()
        sources = [r["source"] for r in rows if r["split"] == split]
        for source, a, b in zip(sources, offsets[:-1], offsets[1:]):
            out.append((source, tokens[a:b][mask[a:b].bool()].long()))
    return out


def coverage(vocab: DraftVocab, tokens: torch.Tensor) -> float:
    return float(vocab.t2d[tokens].float().mean()) if tokens.numel() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--eval", type=Path, help="a data regen directory of the Spec-Bench questions")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    manifest = load_manifest(args.data)
    vocab_total, hidden = manifest["target_vocab_size"], manifest["hidden_size"]
    train = answer_tokens(args.data, "train")
    counts = torch.zeros(vocab_total, dtype=torch.long)
    for _, t in train:
        counts += torch.bincount(t, minlength=vocab_total)
    heldout = answer_tokens(args.data, "heldout")
    held = torch.cat([t for _, t in heldout]) if heldout else torch.zeros(0, dtype=torch.long)
    by_category: dict[str, list[torch.Tensor]] = defaultdict(list)
    for source, t in answer_tokens(args.eval, "train") + answer_tokens(args.eval, "heldout") if args.eval else []:
        by_category[source].append(t)
    rows = []
    eos = ChatTokenizer.load(resolve_model(manifest["settings"]["target"])).hf.eos_token_id
    seen = int((counts > 0).sum())
    for size in sorted({min(int(s), seen) for s in args.sizes.split(",")} | {seen}):
        vocab = DraftVocab.from_counts(counts, size, always=[eos])
        row = {"size": vocab.size, "lm_head_mb_fp16": round(hidden * vocab.size * 2 / 1e6, 1),
               "train": round(coverage(vocab, torch.cat([t for _, t in train])), 4),
               "heldout": round(coverage(vocab, held), 4)}  # fmt: skip
        row |= {f"spec_bench/{c}": round(coverage(vocab, torch.cat(ts)), 4) for c, ts in sorted(by_category.items())}
        rows.append(row)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {
        "command": "benchmarks/draft_vocab_coverage.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?"),
        "target": manifest["settings"].get("target"),
        "train_conversations": len(train),
        "heldout_conversations": len(heldout),
        "train_answer_tokens": int(counts.sum()),
        "heldout_answer_tokens": int(held.numel()),
        "distinct_train_answer_tokens": int((counts > 0).sum()),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = list(rows[0])
    lines = [f"# Draft-vocabulary coverage: {result['target']}", "",
             f"`{result['command']}` ({result['date']}, {result['cpu']}).", "",
             f"{result['train_conversations']} training conversations ({result['train_answer_tokens']} answer tokens, "
             f"{result['distinct_train_answer_tokens']} distinct); held out: {result['heldout_conversations']} "
             f"({result['heldout_answer_tokens']} tokens). Coverage = share of answer tokens inside the vocabulary; "
             "the last row is every token seen in training.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]  # fmt: skip
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
