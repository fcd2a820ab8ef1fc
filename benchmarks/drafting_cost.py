"""Drafting time per iteration against the target's one-token forward T(0), for drafters shaped
like the target: the shipped ones where they exist, else random-weight ones of the design's
shape (issue 14's targets: SpecBlock <= 25% of T(0) on smollm2 and <= 8% on
qwen2.5-coder-1.5b at 16 nodes, EAGLE-3 <= 15% and <= 8%).

Drafting time is measured inside real greedy generation, as `specblock profile` does. A
random drafter is almost never accepted, so each iteration runs one new position: the
cheapest case for block 1 / forward 1, which a trained drafter exceeds by about tau - 1
positions. Not a test.

    python benchmarks/drafting_cost.py --target qwen2.5-coder-1.5b --budgets 4,16 --out DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.api import SpecGenerator
from specblock.bench.drafter_latency import measure_draft_latency
from specblock.budget import measure_verify_latency
from specblock.drafters.checkpoint import save_drafter
from specblock.drafters.eagle3_model import Eagle3Config, Eagle3Model
from specblock.drafters.shipped import shipped_drafter
from specblock.drafters.specblock_model import SpecBlockConfig, SpecBlockModel
from specblock.target.runner import TargetRunner
from specblock.training.draft_vocab import DraftVocab


def random_drafter(method: str, target, vocab_size: int, out: Path, intermediate_size: int = 0) -> Path:
    """A random-weight drafter of the design's shape for `target` (MLP width `intermediate_size`
    where given, as `specblock train --intermediate-size`), saved as a checkpoint."""
    counts = torch.zeros(target.cfg.vocab_size, dtype=torch.long)
    counts[:vocab_size] = torch.arange(vocab_size, 0, -1)  # the lowest ids stand in for the frequent ones
    vocab = DraftVocab.from_counts(counts, vocab_size)
    overrides = {"intermediate_size": intermediate_size} if intermediate_size else {}
    config = (SpecBlockConfig if method == "specblock" else Eagle3Config).for_target(target.cfg, vocab.size, **overrides)
    model = (SpecBlockModel if method == "specblock" else Eagle3Model)(config)
    model.d2t, model.t2d = vocab.d2t, vocab.t2d
    save_drafter(model, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--budgets", default="4,16")
    ap.add_argument("--draft-vocab", type=int, default=4096, help="for random drafters: the shipped drafters' size")
    ap.add_argument("--intermediate-size", type=int, default=0,
                    help="for random drafters: MLP width (0 = the target's; the 1.5B pair ships with 1472)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    base = SpecGenerator.load(args.target, "vanilla", dtype=args.dtype)
    t0 = measure_verify_latency(TargetRunner(base.target), sizes=(0,))[0]
    budgets = tuple(int(b) for b in args.budgets.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("specblock", "eagle3"):
            directory = shipped_drafter(args.target, method)
            kind = "shipped"
            if directory is None:
                directory, kind = random_drafter(
                    method, base.target, args.draft_vocab, Path(tmp) / method, args.intermediate_size), "random"
            draft = measure_draft_latency(base, method, directory, args.target, sizes=budgets)
            for n, seconds in draft.items():
                row = {"method": method, "drafter": kind, "nodes": n, "draft_ms": round(1000 * seconds, 2),
                       "share_of_t0": round(seconds / t0, 3)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    record = {
        **run_header(), "target": args.target, "dtype": base.target.dtype_name, "t0_ms": round(1000 * t0, 2),
        "random_intermediate_size": args.intermediate_size or None, "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"drafting_cost_{args.target}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
