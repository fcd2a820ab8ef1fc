"""The update arms and the offline gain estimate of online adaptation (design §8).

An arm = a few AdamW steps of the drafter's own training loss (design §5 / §7) on crops of
the feedback buffer, with only that arm's parameters trainable. The gain of an update is
estimated without any target forward: the drafter's tree reach on the newest (held-out)
window before and after, where reach at a position = how many consecutive slots, fed the
true tokens, hold the target's token within the width the drafter would give that slot
(rank head and top-1 caps for SpecBlock, the tree's top_k for EAGLE-3).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from specblock.drafters.eagle3 import scaled_shape
from specblock.drafters.eagle3_model import Eagle3Model
from specblock.drafters.specblock import slot_width
from specblock.drafters.specblock_model import SpecBlockModel
from specblock.training.dataset import Sequence, collate
from specblock.training.draft_vocab import DraftVocab
from specblock.training.eagle3_loss import eagle3_loss
from specblock.training.specblock_loss import LossReport, specblock_loss
from specblock.training.trainer import crop

REACH_DEPTH = 4


def arm_names(model: torch.nn.Module) -> list[str]:
    """Cheapest first. SpecBlock: rank head; lm_head + last layer + shift projections; all.
    EAGLE-3 has no rank head and one layer: lm_head (+ final norm); all."""
    if isinstance(model, SpecBlockModel):
        return ["rank_head", "head_last_layer", "whole"]
    return ["lm_head", "whole"]


def arm_parameters(model: torch.nn.Module, arm: str) -> list[torch.nn.Parameter]:
    if arm == "whole":
        return list(model.parameters())
    if arm == "rank_head":
        return list(model.rank_head.parameters())
    if arm == "lm_head":
        return [*model.lm_head.parameters(), *model.norm.parameters()]
    if arm == "head_last_layer":
        return [
            *model.lm_head.parameters(), *model.norm.parameters(),
            *model.layers[-1].parameters(), *model.shift_proj.parameters(),
        ]  # fmt: skip
    raise ValueError(f"unknown adaptation arm {arm!r}")


def vocab_of(model: torch.nn.Module) -> DraftVocab:
    return DraftVocab(torch.arange(model.d2t.numel()) + model.d2t, int(model.t2d.numel()))


@dataclass
class UpdateSettings:
    steps: int = 2  # a CPU pays about 5 ms per position and block for a training step
    batch: int = 2
    window: int = 96  # positions per crop
    lr: float = 3e-4  # at 1e-3 half the updates of a replayed translation stream lowered the reach (benchmarks/adaptation_replay.py)
    blocks: int = 1  # SpecBlock blocks per update step (1 keeps updates cheap on a CPU)
    valid_floor: float = 0.1
    grad_clip: float = 0.5
    seed: int = 0


class OnlineUpdater:
    """Runs one arm's update and measures the drafter's reach; owns the optimizer state."""

    def __init__(self, model: torch.nn.Module, settings: UpdateSettings, node_budget: int) -> None:
        self.model = model
        self.s = settings
        self.node_budget = node_budget
        self.vocab = vocab_of(model)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.updates = 0

    def _loss(self, batch, keep: bool = False) -> LossReport:
        batch = batch.to(self.model.lm_head.weight.device)
        if isinstance(self.model, Eagle3Model):
            return eagle3_loss(self.model, batch, steps=REACH_DEPTH if keep else None, keep_outputs=keep)
        blocks = 1 if keep else self.s.blocks
        return specblock_loss(self.model, batch, self.generator, blocks=blocks, valid_floor=self.s.valid_floor, keep_outputs=keep)

    def update(self, arm: str, train: list[Sequence]) -> float:
        """`steps` optimizer steps on `arm`'s parameters; returns the wall time spent."""
        t0 = time.perf_counter()
        chosen = {id(p) for p in arm_parameters(self.model, arm)}
        params = list(self.model.parameters())
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(id(p) in chosen)
            for _ in range(self.s.steps):
                picks = torch.randint(0, len(train), (self.s.batch,), generator=self.generator).tolist()
                batch = collate([crop(train[i], self.s.window, self.generator) for i in picks], self.vocab)
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(batch).loss
                if loss.requires_grad:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.s.grad_clip)
                    self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            for p in params:
                p.requires_grad_(True)
        self.updates += 1
        return time.perf_counter() - t0

    def arm_weights(self, arm: str) -> list[torch.Tensor]:
        """Copies of `arm`'s parameters, to put back if an update is undone."""
        return [p.detach().clone() for p in arm_parameters(self.model, arm)]

    @torch.no_grad()
    def load_arm_weights(self, arm: str, values: list[torch.Tensor]) -> None:
        for p, v in zip(arm_parameters(self.model, arm), values):
            p.copy_(v)

    def optimizer_state(self, arm: str) -> list[dict | None]:
        """Copies of AdamW's moments for `arm`'s parameters (None: no step taken yet), so
        that undoing an update also undoes the momentum it left behind."""
        return [
            {k: v.clone() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()} if p in self.optimizer.state else None
            for p in arm_parameters(self.model, arm)
        ]

    def load_optimizer_state(self, arm: str, saved: list[dict | None]) -> None:
        for p, state in zip(arm_parameters(self.model, arm), saved):
            if state is None:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state

    @torch.no_grad()
    def reach(self, heldout: list[Sequence]) -> torch.Tensor:
        """Tree reach (0..REACH_DEPTH) at each held-out position the drafter can draft (loss
        positions whose target token lies in the draft vocabulary), in a fixed order, so two
        calls on the same positions pair up."""
        per_position = []
        for seq in heldout:
            rep = self._loss(collate([seq], self.vocab), keep=True)
            hit = self._slot_hits(rep)  # [B, P, D]
            start = rep.ok[..., 0]
            chain = torch.cumprod(hit[..., :REACH_DEPTH].float(), dim=-1).sum(-1)
            per_position.append(chain[start])
        return torch.cat(per_position) if per_position else torch.zeros(0)

    def _slot_hits(self, rep: LossReport) -> torch.Tensor:
        logits, targets = rep.logits.float(), rep.targets
        target_logit = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        rank = 1 + (logits > target_logit[..., None]).sum(-1)
        top1 = torch.softmax(logits, -1).amax(-1)
        widths = torch.empty_like(rank)
        if isinstance(self.model, Eagle3Model):
            widths.fill_(scaled_shape(self.node_budget)[0])
        else:
            for slot in range(widths.shape[-1]):
                cls = rep.rank_classes[..., slot]
                widths[..., slot] = torch.tensor(
                    [slot_width(slot, float(p), int(c)) for p, c in zip(top1[..., slot].flatten(), cls.flatten())]
                ).view(cls.shape)
        return (rank <= widths) & (targets >= 0) & rep.ok


def reach_change_bound(before: torch.Tensor, after: torch.Tensor, confidence: float, block: int = 8) -> tuple[float, float]:
    """The mean change in reach over paired held-out positions and a lower confidence bound
    of it: the mean minus `confidence` standard errors. Neighbouring positions share text
    and overlapping reach chains, so the standard error is taken over blocks of `block`
    consecutive positions, not over positions (which would understate it)."""
    change = (after - before).float()
    delta = float(change.mean())
    blocks = [chunk.mean() for chunk in change.split(block)]
    if len(blocks) < 2:
        return delta, delta
    spread = float(torch.stack(blocks).std())
    return delta, delta - confidence * spread / math.sqrt(len(blocks))
