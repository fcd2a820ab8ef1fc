"""SpecBlock training objective (design §5): multi-block soft cross-entropy with the
valid-prefix mask, plus the rank-head loss.

Block b at context position i has a cumulative offset o_b (o_1 = 0): its token is
x_{i+1+o_b} and slot k is trained on the target's distribution at position j = i+1+o_b+k
(the distribution over x_{i+2+o_b+k}). Each transition draws one offset s in 1..K for the
whole batch; the next block's condition is the previous block's pre-norm hidden at slot
s-1, with gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from specblock.drafters.specblock_model import RANK_CLASSES, SpecBlockModel, block_mask, rank_class
from specblock.target.primitives import CAUSAL
from specblock.training.dataset import Batch

SLOT_DECAY = 0.8


def target_rank_class(logits: torch.Tensor, target_draft_id: torch.Tensor) -> torch.Tensor:
    """[...] the rank head's training target: the class of the target token's rank in the
    drafter's logits [..., V] (class 3 when the token is outside the draft vocabulary, id < 0)."""
    target_logit = logits.gather(-1, target_draft_id.clamp(min=0)[..., None])
    rank = 1 + (logits > target_logit).sum(-1)
    return rank_class(torch.where(target_draft_id >= 0, rank, torch.full_like(rank, 10**6)))


def valid_prefix(ok: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """[..., K] chain mask: v0 = ok0; vk = v(k-1) and correct(k-1) and ok(k).

    A slot is trained while every earlier slot of its block was drafted right; the first
    wrong slot still learns (it was reachable), the ones after it do not.
    """
    v = torch.zeros_like(ok)
    v[..., 0] = ok[..., 0]
    for k in range(1, ok.shape[-1]):
        v[..., k] = v[..., k - 1] & correct[..., k - 1] & ok[..., k]
    return v


def inherited_mask(positions: int, k: int, offsets: list[int]) -> torch.Tensor:
    """Mask of block b = len(offsets)+1 over keys [block 1 ; ... ; block b] (design §5).

    Row (i, k) sees block 1 at positions < i (all slots) and at i for slots < s_1; every
    later earlier block c at position i for slots < s_c; its own block like block 1 does.
    """
    if not offsets:
        return block_mask(positions, k)
    n = positions * k
    pos = torch.arange(n) // k
    slot = torch.arange(n) % k
    same = pos[None, :] == pos[:, None]
    parts = [(pos[None, :] < pos[:, None]) | (same & (slot[None, :] < offsets[0]))]
    for s in offsets[1:]:
        parts.append(same & (slot[None, :] < s))
    parts.append(block_mask(positions, k))
    return torch.cat(parts, dim=1)


def ordinal_soft_labels(target: torch.Tensor, classes: int = RANK_CLASSES) -> torch.Tensor:
    """Label smoothing around the true class t: weight 1/(1+|c-t|+max(t-c,0))^2, normalised."""
    c = torch.arange(classes, device=target.device)
    t = target[..., None]
    w = 1.0 / (1 + (c - t).abs() + (t - c).clamp(min=0)).float() ** 2
    return w / w.sum(-1, keepdim=True)


def rank_loss(rank_logits: torch.Tensor, target_class: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ordinal soft-label CE x distance weight (under-estimating by d costs 1+2d, over 1+d)
    x per-slot class-frequency weight min(1, 10/count), averaged over masked rows."""
    if not bool(mask.any()):
        return rank_logits.sum() * 0.0
    labels = ordinal_soft_labels(target_class)
    ce = -(labels * F.log_softmax(rank_logits.float(), dim=-1)).sum(-1)
    predicted = rank_logits.detach().argmax(-1)
    distance = 1 + (target_class - predicted).abs() + (target_class - predicted).clamp(min=0)
    freq = torch.ones_like(ce)
    for k in range(mask.shape[-1]):
        m = mask[..., k]
        counts = torch.bincount(target_class[..., k][m], minlength=RANK_CLASSES).float()
        freq[..., k] = (10.0 / counts.clamp(min=1)).clamp(max=1.0)[target_class[..., k]]
    w = (distance * freq * mask).float()
    return (ce * w).sum() / mask.sum()


@dataclass
class LossReport:
    loss: torch.Tensor
    draft_loss: float = 0.0
    rank_loss: float = 0.0
    slot_correct: list[list[float]] = field(default_factory=list)  # per block, per slot: correct count
    slot_total: list[list[float]] = field(default_factory=list)  # per block, per slot: loss-masked count
    # first block (SpecBlock) / all TTT steps (EAGLE-3), kept on request for online evaluation:
    logits: torch.Tensor | None = None  # [B, P, K, V] drafter logits per slot
    rank_classes: torch.Tensor | None = None  # [B, P, K] predicted rank class (SpecBlock)
    targets: torch.Tensor | None = None  # [B, P, K] draft id of the target's argmax (-1: outside)
    ok: torch.Tensor | None = None  # [B, P, K] the slot's target is trainable
    block_logits: list[torch.Tensor] = field(default_factory=list)  # every block's logits (SpecBlock, on request)
    offsets: list[int] = field(default_factory=list)  # the drawn block-transition offsets s


def _gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, P, ...] gathered at index [B, P, K] along P -> [B, P, K, ...]."""
    b, p, k = index.shape
    flat = index.reshape(b, p * k)
    if x.dim() == 2:
        return x.gather(1, flat).view(b, p, k)
    rest = x.shape[2:]
    out = x.gather(1, flat.view(b, p * k, *([1] * len(rest))).expand(b, p * k, *rest))
    return out.view(b, p, k, *rest)


def specblock_loss(
    model: SpecBlockModel,
    batch: Batch,
    generator: torch.Generator,
    blocks: int = 3,
    use_valid_prefix: bool = True,
    rank_weight: float = 1.0,
    valid_floor: float = 0.0,
    keep_outputs: bool = False,
) -> LossReport:
    """Total loss of one micro-batch (design §5).

    Slot k's loss is the mean over positions with v(i,k) = 1. `valid_floor` > 0 divides by at
    least `valid_floor` x (positions whose slot-k target is trainable) instead: with small
    batches and an untrained drafter only a handful of positions reach the later slots, and
    their mean would give those few positions a weight that swamps slot 0's signal.
    """
    cfg = model.cfg
    k = cfg.block_size
    b, p = batch.tokens.shape
    device = batch.tokens.device
    positions = torch.arange(p, device=device)[None]
    decay = SLOT_DECAY ** torch.arange(k, dtype=torch.float32, device=device)
    condition = batch.features
    inherited = False
    offset = 0
    past = None
    report = LossReport(loss=torch.zeros((), device=device))
    total = torch.zeros((), device=device)
    for block in range(blocks):
        token_index = (positions + 1 + offset).clamp(max=p - 1).expand(b, p)
        tokens = batch.tokens.gather(1, token_index)
        # block 1's rule is causal over its position-major rows: SDPA's fused kernel, no mask
        mask = inherited_mask(p, k, report.offsets).to(device)[None] if report.offsets else CAUSAL
        out = model.blocks(condition, tokens, positions, mask, past, inherited=inherited)
        logits = model.logits(out.hidden)  # [B, P, K, V]
        # slot k of position i is trained at j = i+1+offset+k
        j = positions[..., None] + 1 + offset + torch.arange(k, device=device)
        inside = (j <= p - 1).expand(b, p, k)
        j = j.clamp(max=p - 1).expand(b, p, k)
        ok = _gather_positions(batch.ok, j) & inside
        loss_mask = _gather_positions(batch.loss_mask, j) & inside
        target_argmax = _gather_positions(batch.target_argmax, j)
        draft_ids = _gather_positions(batch.draft_ids, j)
        draft_probs = _gather_positions(batch.draft_probs, j)
        wide = logits.float()  # one fp32 copy serves the loss and the argmax (bf16 argmax is slow on CPUs)
        logp = F.log_softmax(wide, dim=-1)
        ce = -(draft_probs * logp.gather(-1, draft_ids.clamp(min=0))).sum(-1)
        best = wide.detach().argmax(-1)
        drafted = model.d2t[best] + best  # target id of the drafter's argmax
        correct = drafted == target_argmax
        v = valid_prefix(ok, correct) if use_valid_prefix else ok
        counts = torch.maximum(v.sum(dim=(0, 1)), valid_floor * ok.sum(dim=(0, 1))).clamp(min=1)
        draft = ((ce * v).sum(dim=(0, 1)) / counts * decay).sum()
        target_draft_id = draft_ids[..., 0]  # the top-1 entry is the target's argmax
        r_mask = valid_prefix(loss_mask, correct)
        rank_l = rank_loss(model.rank_logits(out.hidden, logits), target_rank_class(logits, target_draft_id), r_mask)
        total = total + draft + rank_weight * rank_l
        report.draft_loss += float(draft.detach())
        report.rank_loss += float(rank_l.detach())
        report.slot_correct.append((correct & loss_mask).sum(dim=(0, 1)).float().tolist())
        report.slot_total.append(loss_mask.sum(dim=(0, 1)).float().tolist())
        if keep_outputs:
            report.block_logits.append(logits.detach())
        if keep_outputs and block == 0:
            report.logits = logits.detach()
            report.rank_classes = model.rank_logits(out.hidden, logits).argmax(-1).detach()
            report.targets, report.ok = target_draft_id, ok
        if block + 1 == blocks:
            break
        s = int(torch.randint(1, k + 1, (1,), generator=generator))
        report.offsets.append(s)
        offset += s
        condition = out.hidden[:, :, s - 1]
        inherited = True
        past = [
            (torch.cat([a[0], n[0]], 2), torch.cat([a[1], n[1]], 2)) for a, n in zip(past, out.kv)
        ] if past is not None else list(out.kv)  # fmt: skip
    report.loss = total
    return report
