"""The settings of one training run (`specblock train`'s options) and its learning-rate schedule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from specblock.errors import InvalidSettingError
from specblock.target.cpu import auto_dtype

METHODS = ("specblock", "eagle3")
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class TrainSettings:
    method: str
    max_steps: int = 1000
    batch_size: int = 8  # sequences per optimizer step (over all processes)
    micro_batch: int = 2
    window: int = 128  # positions per sequence crop
    lr: float = 6e-4
    warmup_steps: int = 50
    grad_clip: float = 0.5
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 50
    snapshot_every: int = 0  # > 0: keep the drafter every this many steps (OUT/snapshots/step-N), for scaling curves
    stop_at: int = 0  # > 0: end this run after that step, the schedule still that of max_steps (budgeted ablations)
    eval_sequences: int = 32
    # SpecBlock only (the ablations of design §9 switch these off)
    blocks: int = 3
    valid_prefix: bool = True
    layer_shift: bool = True
    shift_slot0: bool = False  # True: the design's shift, which projects slot 0 as well (SpecBlockConfig)
    # see specblock_loss: 1 = each slot weighted by how often its prefix is right; 0 = the design's per-slot mean
    valid_floor: float = 1.0
    intermediate_size: int = 0  # both drafters' MLP width; 0 = the target's (design §4), less = a compact drafter
    device: str = "cpu"  # "cuda" trains on the GPU (nccl under torchrun)
    precision: str = "auto"  # "bfloat16" autocast (fp32 master weights), "float32", or the fastest here

    def validate(self, world: int) -> None:
        if self.method not in METHODS:
            raise InvalidSettingError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.max_steps < 1 or self.batch_size < 1 or self.micro_batch < 1 or self.window < 8:
            raise InvalidSettingError("max_steps, batch_size, micro_batch must be >= 1 and window >= 8")
        if self.batch_size % (self.micro_batch * world):
            raise InvalidSettingError(
                f"batch_size {self.batch_size} must be a multiple of micro_batch x processes ({self.micro_batch} x {world})"
            )
        if self.blocks < 1 or self.intermediate_size < 0:
            raise InvalidSettingError("blocks must be >= 1 and intermediate_size >= 0")
        if not 0 <= self.stop_at <= self.max_steps or self.snapshot_every < 0:
            raise InvalidSettingError("stop_at must lie in 0..max_steps and snapshot_every be >= 0")
        if self.precision not in PRECISIONS:
            raise InvalidSettingError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InvalidSettingError(f"unknown device {self.device!r}: cpu or cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidSettingError("--device cuda: no CUDA device is visible to PyTorch")

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the forward passes, None for plain fp32. `auto` takes bf16 where
        this machine multiplies bf16 natively (CUDA, AMX, AVX512-BF16), as `--dtype auto` does."""
        if self.precision == "auto":
            return torch.bfloat16 if auto_dtype(self.device) == torch.bfloat16 else None
        return torch.bfloat16 if self.precision == "bfloat16" else None

    def autocast(self):
        dtype = self.autocast_dtype()
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then linear decay to 0 at max_steps (the authors' schedule shape)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    return s.lr * max(0.0, (s.max_steps - step) / max(1, s.max_steps - s.warmup_steps))
