"""Break the training objectives one piece at a time and check that the tests notice.

Each mutation edits one line of the source, runs the objective tests, and restores the file.
A mutation that leaves the tests green is a hole in the tests: the script exits 1 and names it.

    .venv/bin/python scripts/mutation_check.py        # about 2 minutes on 2 cores
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSS = "src/specblock/training/specblock_loss.py"
MODEL = "src/specblock/drafters/specblock_model.py"
EAGLE = "src/specblock/training/eagle3_loss.py"
TESTS = ["tests/test_training_objectives.py", "tests/test_specblock_model.py"]

# (what it breaks, file, original text, mutated text)
MUTATIONS = [
    (
        "valid floor: ignored (every slot a plain mean over its valid positions)",
        LOSS,
        "valid_floor * ok.sum(dim=(0, 1))",
        "0.0 * ok.sum(dim=(0, 1))",
    ),
    (
        "valid prefix: ignore whether the previous slot was right",
        LOSS,
        "v[..., k - 1] & correct[..., k - 1] & ok[..., k]",
        "v[..., k - 1] & ok[..., k]",
    ),
    (
        "valid prefix: look at this slot's correctness, not the previous one's",
        LOSS,
        "v[..., k - 1] & correct[..., k - 1] & ok[..., k]",
        "v[..., k - 1] & correct[..., k] & ok[..., k]",
    ),
    (
        "valid prefix: switched off (every trainable slot learns)",
        LOSS,
        "v = valid_prefix(ok, correct) if use_valid_prefix else ok",
        "v = ok",
    ),
    (
        "inheritance: condition from slot s instead of s-1",
        LOSS,
        "condition = out.hidden[:, :, s - 1]",
        "condition = out.hidden[:, :, min(s, k - 1)]",
    ),
    (
        "inheritance: next block's token not shifted by the offset",
        LOSS,
        "token_index = (positions + 1 + offset)",
        "token_index = (positions + 1)",
    ),
    (
        "inheritance: targets not shifted by the offset",
        LOSS,
        "j = positions[..., None] + 1 + offset + torch.arange(k, device=device)",
        "j = positions[..., None] + 1 + torch.arange(k, device=device)",
    ),
    (
        "inheritance: block 2 sees block 1's slot s-1 at its own position too (<= s)",
        LOSS,
        "parts = [(pos[None, :] < pos[:, None]) | (same & (slot[None, :] < offsets[0]))]",
        "parts = [(pos[None, :] < pos[:, None]) | (same & (slot[None, :] <= offsets[0]))]",
    ),
    (
        "rank target: 0-based rank",
        LOSS,
        "rank = 1 + (logits > target_logit).sum(-1)",
        "rank = (logits > target_logit).sum(-1)",
    ),
    (
        "rank target: the target's second choice instead of its argmax",
        LOSS,
        "target_draft_id = draft_ids[..., 0]",
        "target_draft_id = draft_ids[..., 1]",
    ),
    (
        "rank target: class edges 1 | 2-5 | 6-10 | >10",
        MODEL,
        "(rank > 1).long() + (rank > 4).long()",
        "(rank > 1).long() + (rank > 5).long()",
    ),
    (
        "rank loss: no chain mask (every loss-masked slot)",
        LOSS,
        "r_mask = valid_prefix(loss_mask, correct)",
        "r_mask = loss_mask",
    ),
    (
        "shift: slot 0 projected as well (the design's form) where the config says it is not",
        MODEL,
        "if self.cfg.shift_slot0:",
        "if True:",
    ),
    (
        "shift: blocks() projects every slot whatever the config says",
        MODEL,
        "h = self.shift(n, h)",
        "h = self.shift_proj[n - 1](torch.cat([h, shift_slots(h)], dim=-1))",
    ),
    (
        "shift: random init instead of [I ; 0]",
        MODEL,
        "proj.weight[:, :h].copy_(torch.eye(h))",
        "pass",
    ),
    (
        "shift: a drafter saved before shift_slot0 loads with slot 0 unprojected",
        MODEL,
        'LEGACY_SETTINGS = {"shift_slot0": True}',
        'LEGACY_SETTINGS = {"shift_slot0": False}',
    ),
    (
        "EAGLE-3: later steps see their own earlier positions",
        EAGLE,
        "parts += [pos[None, :] == pos[:, None]] * step",
        "parts += [pos[None, :] <= pos[:, None]] * step",
    ),
]


def main() -> int:
    survived = []
    for name, rel, before, after in MUTATIONS:
        path = ROOT / rel
        original = path.read_text()
        if original.count(before) != 1:
            print(f"SKIPPED (source changed, update the script): {name}")
            survived.append(name)
            continue
        path.write_text(original.replace(before, after))
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                                 cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        finally:
            path.write_text(original)
        caught = run.returncode != 0
        print(f"{'caught  ' if caught else 'SURVIVED'} {name}")
        if not caught:
            survived.append(name)
    print(f"{len(MUTATIONS) - len(survived)}/{len(MUTATIONS)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
