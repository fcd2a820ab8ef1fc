"""EAGLE-3 training-time test (design §7): 7 unrolled steps.

Step s at context position i takes the drafter's own step s-1 output at i as its hidden
(the fused target feature h_i at step 0), the ground-truth token x_{i+1+s}, RoPE position
i+1+s, and learns the target's distribution at j = i+1+s (over x_{i+2+s}) with weight
0.8^s, masked where the target's argmax lies outside the draft vocabulary. Step s attends
to step 0's keys at positions <= i and to its own earlier steps at i only: exactly what a
depth-s tree node sees when drafting (the context, then its ancestors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specblock.drafters.eagle3_model import Eagle3Model
from specblock.target.primitives import CAUSAL
from specblock.training.dataset import Batch
from specblock.training.specblock_loss import SLOT_DECAY, LossReport


def ttt_mask(positions: int, step: int, device=None) -> torch.Tensor:
    """[P, P*(step+1)]: causal over step 0's keys, then the diagonal of each later step."""
    pos = torch.arange(positions, device=device)
    parts = [pos[None, :] <= pos[:, None]]
    parts += [pos[None, :] == pos[:, None]] * step
    return torch.cat(parts, dim=1)


def eagle3_loss(model: Eagle3Model, batch: Batch, steps: int | None = None, keep_outputs: bool = False) -> LossReport:
    steps = steps or model.cfg.ttt_steps
    b, p = batch.tokens.shape
    device = batch.tokens.device
    positions = torch.arange(p, device=device)[None]
    hidden = batch.features
    fused = False
    past = None
    total = torch.zeros((), device=device)
    correct_counts, totals = [], []
    draft_total = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for s in range(steps):
        j = (positions + 1 + s).expand(b, p)
        inside = j <= p - 1
        j = j.clamp(max=p - 1)
        tokens = batch.tokens.gather(1, j)
        mask = CAUSAL if s == 0 else ttt_mask(p, s, device)[None]  # step 0 is plain causal attention
        out, kv = model.step(hidden, tokens, positions + 1 + s, mask, past, fused=fused)
        logits = model.logits(out)
        ok = batch.ok.gather(1, j) & inside
        loss_mask = batch.loss_mask.gather(1, j) & inside
        draft_ids = batch.draft_ids.gather(1, j[..., None].expand(b, p, batch.draft_ids.shape[-1]))
        draft_probs = batch.draft_probs.gather(1, j[..., None].expand(b, p, batch.draft_probs.shape[-1]))
        wide = logits.float()  # one fp32 copy serves the loss and the argmax (bf16 argmax is slow on CPUs)
        logp = F.log_softmax(wide, dim=-1)
        ce = -(draft_probs * logp.gather(-1, draft_ids.clamp(min=0))).sum(-1)
        step_loss = (ce * ok).sum() / ok.sum().clamp(min=1)
        total = total + SLOT_DECAY**s * step_loss
        draft_total += float(step_loss.detach())
        argmax = wide.detach().argmax(-1)
        correct = (model.d2t[argmax] + argmax) == batch.target_argmax.gather(1, j)
        if keep_outputs:
            kept.append((logits.detach(), draft_ids[..., 0], ok))
        correct_counts.append(float((correct & loss_mask).sum()))
        totals.append(float(loss_mask.sum()))
        hidden, fused = out, True
        past = kv if past is None else (torch.cat([past[0], kv[0]], 2), torch.cat([past[1], kv[1]], 2))
    report = LossReport(loss=total, draft_loss=draft_total, slot_correct=[correct_counts], slot_total=[totals])
    if kept:
        report.logits, report.targets, report.ok = (torch.stack(parts, dim=2) for parts in zip(*kept))
    return report
