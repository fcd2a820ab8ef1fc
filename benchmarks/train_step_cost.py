"""Seconds per training step of both drafters for one target, on a `data regen` directory
that may still be growing (it reads the train shards written so far; no manifest needed).

Plans a training run before its data is complete: the step time times `--max-steps` is the
run's length. A step is `--batch-size` crops of `--window` positions in micro-batches of 2,
as `benchmarks/drafter_recipe.sh` trains; 2 warm-up steps, then `--steps` timed ones. The
draft vocabulary is counted over the shards read.

    .venv/bin/python benchmarks/train_step_cost.py --target qwen2.5-coder-1.5b \
        --data /work/data/regen-qwen2.5-coder-1.5b --intermediate-size 1472 --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.models.resolve import resolve_model
from specblock.target.config import ModelConfig
from specblock.training import trainer
from specblock.training.dataset import ShardedSequences
from specblock.training.draft_vocab import DraftVocab, count_answer_tokens


def code_commit() -> str:
    """The commit of the specblock code this run imports (+ "-dirty" with local changes), so a
    before/after pair of result files says which code each measured."""
    import specblock

    src = Path(specblock.__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def step_seconds(settings: trainer.TrainSettings, cfg, vocab, embed, seqs, steps: int) -> list[float]:
    model = trainer.new_model(settings, cfg, vocab, embed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    objective = trainer.TrainingObjective(model, settings)
    times = []
    for step in range(2 + steps):
        t0 = time.perf_counter()
        micro = trainer.step_micro_batches(seqs, vocab, settings, step)
        trainer.accumulate_gradients(objective, micro, settings, step, trainer.Distributed())
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--data", type=Path, required=True, help="a `data regen` directory (finished or not)")
    ap.add_argument("--shards", type=int, default=4, help="train shards to read")
    ap.add_argument("--methods", default="specblock,eagle3")
    ap.add_argument("--intermediate-size", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header = run_header() | {"commit": code_commit()}
    target = resolve_model(args.target)
    cfg = ModelConfig.from_dir(target)
    shards = sorted(p.name for p in args.data.glob("train-*.safetensors"))[: args.shards]
    if not shards:
        raise SystemExit(f"{args.data} holds no train shards")
    seqs = ShardedSequences(args.data, shards)
    answers = ((seq.tokens.tolist(), seq.answer_mask.tolist()) for seq in seqs)
    vocab = DraftVocab.from_counts(count_answer_tokens(answers, cfg.vocab_size), args.vocab_size)
    embed = trainer.target_embeddings(target)
    rows = []
    for method in args.methods.split(","):
        settings = trainer.TrainSettings(
            method=method, batch_size=args.batch_size, micro_batch=2, window=args.window,
            intermediate_size=args.intermediate_size, precision=args.precision,
        )  # fmt: skip
        times = step_seconds(settings, cfg, vocab, embed, seqs, args.steps)
        median = statistics.median(times)
        rows.append({"method": method, "step_s": [round(t, 3) for t in times], "median_step_s": round(median, 3),
                     "positions_per_s": round(args.batch_size * args.window / median, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"train_step_{args.target}"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / f"{name}.json").write_text(json.dumps(header | {"settings": settings, "rows": rows}, indent=2) + "\n")
    lines = [f"# Training step cost: {args.target}", "", f"`{header['command']}`", "",
             f"{header['date']}, {header['machine']}, code {header['commit']}.", "",
             f"{args.batch_size} x {args.window} positions a step, micro-batches of 2, MLP width "
             f"{args.intermediate_size or 'of the target'}, {args.vocab_size} draft tokens, precision {args.precision}, "
             f"{len(shards)} train shards.", "",
             "| method | s / step (median) | positions / s |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {r['method']} | {r['median_step_s']} | {r['positions_per_s']} |" for r in rows]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/{name}.json and .md")


if __name__ == "__main__":
    main()
