"""Which rank classes does a SpecBlock drafter's rank head predict, and how often does the
slot width it picks differ from fixed top-k? Explains the fixed-top-4 ablation (issue 4).

Runs block 1 of the drafter over held-out training sequences (features stored by `data
prepare` or `data regen`, no target forward) and counts, at slots k >= 1 of positions the
drafter could draft, the predicted class, the true class (the target token's rank) and the pair (width from the rank head, width with fixed top-k),
both after the top-1 probability caps that drafting applies.

  python benchmarks/rank_head_classes.py --data /work/runs/data-uc-gsm8k DRAFTER_DIR [...]
  python benchmarks/rank_head_classes.py --data DATA --run RUN_DIR   # each snapshot of a run, then its drafter
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from benchmarks_common import kept_drafters

from specblock.adapt.updates import vocab_of
from specblock.drafters.checkpoint import load_drafter
from specblock.drafters.specblock import RANK_TOPK, slot_width
from specblock.models.resolve import resolve_model
from specblock.target.transformer import Transformer
from specblock.training.dataset import collate, load_sequences
from specblock.training.specblock_loss import specblock_loss, target_rank_class


def count(net, sequences, fixed: int) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """Counters of predicted classes, true classes and (rank-head width, fixed width) pairs."""
    vocab = vocab_of(net)
    classes, truth, widths = collections.Counter(), collections.Counter(), collections.Counter()
    with torch.no_grad():
        for seq in sequences:
            rep = specblock_loss(
                net, collate([seq], vocab), torch.Generator().manual_seed(0), blocks=1, keep_outputs=True
            )
            top1 = torch.softmax(rep.logits.float(), -1).amax(-1)
            actual = target_rank_class(rep.logits, rep.targets)  # the class the head is trained to predict
            for slot in range(1, rep.rank_classes.shape[-1]):
                chosen = rep.ok[..., slot]
                truth.update(actual[..., slot][chosen].tolist())
                for c, p in zip(rep.rank_classes[..., slot][chosen].tolist(), top1[..., slot][chosen].tolist()):
                    classes[c] += 1
                    widths[(slot_width(slot, p, c), slot_width(slot, p, 0, fixed=fixed))] += 1
    return classes, truth, widths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drafters", nargs="*", type=Path)
    ap.add_argument("--run", type=Path, help="a training run: its snapshots by step, then its final drafter")
    ap.add_argument("--data", type=Path, required=True, help="a `data prepare` directory with a heldout split")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--fixed", type=int, default=4)
    args = ap.parse_args()
    drafters = list(args.drafters) + ([path for _, path in kept_drafters(args.run)] if args.run else [])
    if not drafters:
        ap.error("name drafter directories or --run")
    model = Transformer.load(resolve_model(args.target), torch.float32, "cpu")
    sequences = load_sequences(args.data, "heldout")[: args.sequences]
    print(f"rank classes: 0 = rank 1, 1 = rank 2-4, 2 = rank 5-10, 3 = beyond 10; widths {RANK_TOPK}")
    for path in drafters:
        net = load_drafter(path, model.cfg, model.embed.float(), method="specblock").eval()
        classes, truth, widths = count(net, sequences, args.fixed)
        n = sum(classes.values())
        same = sum(v for (a, b), v in widths.items() if a == b)
        print(f"\n{path}: {n} slot predictions (slots 1-3, {len(sequences)} held-out sequences)")
        print("  predicted class shares: " + ", ".join(f"{c}: {classes[c] / n:.1%}" for c in range(len(RANK_TOPK))))
        print("  true class shares:      " + ", ".join(f"{c}: {truth[c] / n:.1%}" for c in range(len(RANK_TOPK))))
        print(f"  width equal to fixed top-{args.fixed}: {same / n:.1%}")
        print("  (rank-head width, fixed width): " + ", ".join(f"{k}: {v}" for k, v in sorted(widths.items())))


if __name__ == "__main__":
    main()
