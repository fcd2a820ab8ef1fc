"""A training run's checkpoint (weights, AdamW moments, step and settings) and its resume check.

The checkpoint is written to `checkpoint.tmp/` (its state.json last) and swapped into place by
renames (`swap_in`), so a killed process leaves a whole checkpoint under one of three names,
which resuming looks for in turn (`checkpoint_dir`). Resuming refuses a run whose weight-shaping
settings differ. (Renames, not fsync: a power loss is not covered.)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specblock.drafters.checkpoint import swap_in
from specblock.drafters.specblock_model import LEGACY_SETTINGS
from specblock.errors import SpecBlockError
from specblock.training.settings import TrainSettings

# settings that shape the weights: a resumed run must keep them (the others, e.g. max_steps, may change)
RESUME_KEYS = ("method", "batch_size", "micro_batch", "window", "seed", "blocks", "valid_prefix", "layer_shift",
               "shift_slot0", "valid_floor", "intermediate_size")  # fmt: skip
SPECBLOCK_ONLY = ("blocks", "valid_prefix", "layer_shift", "shift_slot0", "valid_floor")
# what a checkpoint saved before a setting existed was trained with, where that is not today's default:
# the drafter's own (LEGACY_SETTINGS), and the design's plain slot mean from before --valid-floor
RUN_LEGACY_SETTINGS = LEGACY_SETTINGS | {"valid_floor": 0.0}


def save_training_state(out: Path, model, opt: torch.optim.Optimizer, step: int, s: TrainSettings) -> None:
    tmp = out / "checkpoint.tmp"
    if checkpoint_dir(out) == tmp:  # the run resumed from it: keep it whole while this save writes
        os.replace(tmp, out / "checkpoint")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = dict(model.named_parameters())
    save_file({k: v.detach().contiguous() for k, v in params.items()}, str(tmp / "weights.safetensors"))
    moments = {}
    for name, p in params.items():
        st = opt.state.get(p)
        if st:
            moments[f"{name}.exp_avg"] = st["exp_avg"].contiguous()
            moments[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            moments[f"{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    save_file(moments, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "settings": asdict(s)}, indent=2))
    swap_in(tmp, out / "checkpoint")  # the old one moves aside as checkpoint.old until the new one is in place
    shutil.rmtree(out / "checkpoint.old", ignore_errors=True)  # left by a kill between the renames, now stale


def checkpoint_dir(out: Path) -> Path | None:
    """The run's last whole checkpoint, None before the first save. `checkpoint/` if there is
    one; else `checkpoint.old/`, when a kill fell between the two renames of `swap_in`; else a
    finished `checkpoint.tmp/` (state.json is written last), when a save by a version before
    `swap_in` was killed between deleting the old checkpoint and the rename."""
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        if (out / name / "state.json").exists():
            return out / name
    return None


def load_training_state(out: Path, model, opt: torch.optim.Optimizer, s: TrainSettings) -> int:
    ckpt = checkpoint_dir(out)
    if ckpt is None:
        return 0
    state = json.loads((ckpt / "state.json").read_text())
    saved = state["settings"]
    defaults = asdict(TrainSettings(method=s.method))  # settings added later read as their default
    moot = set() if s.method == "specblock" else set(SPECBLOCK_ONLY)
    if not s.layer_shift:  # no projection: how it would treat slot 0 does not matter
        moot.add("shift_slot0")
    was = {k: saved.get(k, RUN_LEGACY_SETTINGS.get(k, defaults[k])) for k in RESUME_KEYS if k not in moot}
    changed = {k for k, v in was.items() if v != asdict(s)[k]}
    if changed:
        raise SpecBlockError(f"{ckpt} was trained with other settings ({', '.join(sorted(changed))}); use a new --out")
    try:
        weights = load_file(str(ckpt / "weights.safetensors"))
        moments = load_file(str(ckpt / "optimizer.safetensors"))
    except Exception as exc:
        raise SpecBlockError(f"cannot resume from {ckpt}: {exc}") from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    for name, p in params.items():
        if f"{name}.exp_avg" in moments:
            opt.state[p] = {
                "exp_avg": moments[f"{name}.exp_avg"].to(p.device).clone(),
                "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(p.device).clone(),
                "step": torch.tensor(float(moments[f"{name}.step"][0])),
            }
    return int(state["step"])


def drop_log_after(path: Path, step: int) -> None:
    """Keep the log lines up to the resumed step: later ones describe steps that will be redone,
    and a half-written last line (the process was killed mid-write) is dropped with them."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise SpecBlockError(f"{path}:{number} is not a JSON line; fix or remove the log") from None
        if entry["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
