"""The SpecBlock drafter network (design §4): one forward drafts a block of K positions.

Shapes: a call handles B sequences of P *positions*; each position has K *slots*, so the
decoder sees B x (P*K) rows, flattened position-major (row = p*K + k). Slot k of position i
predicts x_{i+2+k}; its RoPE position is i+1+k. The caller supplies the attention mask
(built by `block_mask` / `inherited_mask` in training, by the drafter when drafting). With no
keys before the call, `block_mask` is exactly causal over the flattened rows, so `CAUSAL` may
stand for it (SDPA's fused causal kernel, no P*K x P*K mask).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specblock.drafters.layers import (
    KV,
    CacheSlot,
    CacheSlots,
    DecoderLayer,
    DrafterRotary,
    RMSNorm,
    drafting_linear,
    target_shaped,
)
from specblock.target.kv_cache import KVCache
from specblock.target.primitives import Causal

RANK_FEATURES = 15
RANK_CLASSES = 4  # rank of the target's token in the drafter's logits: 1 | 2-4 | 5-10 | >10
# what drafters saved before a setting existed were trained with, where that is not its default:
# before `shift_slot0` the shift projected slot 0 as well (the design's form)
LEGACY_SETTINGS = {"shift_slot0": True}


@dataclass
class SpecBlockConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    target_hidden_size: int
    target_vocab_size: int
    draft_vocab_size: int
    num_hidden_layers: int = 2
    block_size: int = 4
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rank_hidden_size: int = 256
    layer_shift: bool = True  # ablation switch: False drops the shift projections
    # the design projects slot 0 too ([h ; h]); ours leaves slot 0's hidden as it is (docs/drafters.md)
    shift_slot0: bool = False

    @classmethod
    def for_target(cls, target_cfg, draft_vocab_size: int, **overrides) -> "SpecBlockConfig":
        """A drafter shaped like the target (hidden size, heads, MLP width), as §4 prescribes."""
        return cls(**(target_shaped(target_cfg, draft_vocab_size) | overrides))

    def to_dict(self) -> dict:
        return {"architectures": ["SpecBlockDrafter"], "method": "specblock", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SpecBlockConfig":
        names = {f.name for f in fields(cls)}
        return cls(**(LEGACY_SETTINGS | {k: v for k, v in d.items() if k in names}))


class InputLayer(nn.Module):
    """Slot inputs: fuse([norm(condition) ; norm(embed(token)) ; norm(position_queries[k])])."""

    def __init__(self, cfg: SpecBlockConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.condition_proj = nn.Linear(3 * cfg.target_hidden_size, h, bias=False)
        self.condition_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.token_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.position_queries = nn.Parameter(torch.randn(cfg.block_size, h) * 0.02)
        self.query_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.fuse = nn.Linear(3 * h, h, bias=False)

    def forward(self, condition: torch.Tensor, token_embeds: torch.Tensor, inherited: bool) -> torch.Tensor:
        """[B, P, 3H_t or H] conditions and [B, P, H] embeddings -> [B, P, K, H] slot inputs.

        `inherited` conditions are drafter hiddens (already H wide): the projection is skipped.
        """
        if not inherited:
            condition = drafting_linear(self, "condition_proj", self.condition_proj, condition)
        cond = self.condition_norm(condition)
        tok = self.token_norm(token_embeds.to(cond.dtype))
        query = self.query_norm(self.position_queries.to(cond.dtype))  # [K, H]
        h = cond.shape[-1]
        # fuse is linear and [cond ; tok] is the same for a position's K slots, so fuse([cond ; tok ;
        # query]) = (its first 2H columns on P rows) + (its last H columns on K rows), equal in exact
        # arithmetic (each part is rounded on its own in bf16): the fuse product, about a sixth of a
        # training step's products, runs on P rows instead of P*K
        per_position = drafting_linear(self, "fuse_context", self.fuse, torch.cat([cond, tok], dim=-1), slice(0, 2 * h))
        per_slot = drafting_linear(self, "fuse_query", self.fuse, query, slice(2 * h, 3 * h))
        return per_position[:, :, None] + per_slot


def keep_own_slot(proj: nn.Linear) -> None:
    """Start a shift projection as [I ; 0]: each slot keeps its own hidden and the shifted half
    learns from zero, where a default (random) init would replace the residual stream between
    layers with a random mix (measured slower to learn: docs/drafters.md)."""
    h = proj.out_features
    with torch.no_grad():
        proj.weight.zero_()
        proj.weight[:, :h].copy_(torch.eye(h))


def shift_slots(h: torch.Tensor) -> torch.Tensor:
    """[B, P, K, H]: slot k receives slot k-1's hidden; slot 0 keeps its own."""
    return torch.cat([h[:, :, :1], h[:, :, :-1]], dim=2)


@dataclass
class BlockOutput:
    hidden: torch.Tensor  # [B, P, K, H] pre-norm final hidden (the inheritance state)
    kv: list[KV]  # per layer: this call's keys/values, [B, kv_heads, P*K, d]


class SpecBlockModel(nn.Module):
    def __init__(self, cfg: SpecBlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg
        self.input_layer = InputLayer(c)
        self.layers = nn.ModuleList(
            DecoderLayer(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps)
            for _ in range(c.num_hidden_layers)
        )  # fmt: skip
        n_shift = c.num_hidden_layers - 1 if c.layer_shift else 0
        self.shift_proj = nn.ModuleList(nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False) for _ in range(n_shift))
        if not c.shift_slot0:  # the design's form keeps the default init
            for proj in self.shift_proj:
                keep_own_slot(proj)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)
        self.rank_head = nn.Sequential(
            nn.Linear(c.hidden_size + RANK_FEATURES, c.rank_hidden_size, bias=False),
            nn.SiLU(),
            nn.Linear(c.rank_hidden_size, RANK_CLASSES, bias=False),
        )
        # frozen target embeddings: copied in by the loader, never saved with the drafter
        self.register_buffer("embed_tokens", torch.zeros(0, c.hidden_size), persistent=False)
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(c.target_vocab_size, dtype=torch.bool))
        self.rotary = DrafterRotary(c.head_dim, c.rope_theta)

    def blocks(
        self,
        condition: torch.Tensor,  # [B, P, 3H_t] target features, or [B, P, H] inherited hiddens
        tokens: torch.Tensor,  # [B, P] target token ids
        positions: torch.Tensor,  # [B or 1, P] context position i of each row group
        mask: torch.Tensor | Causal,  # [B or 1, P*K, past + P*K] bool, or CAUSAL (= block_mask, nothing before)
        past: list[KV] | None = None,
        inherited: bool = False,
        cache: KVCache | None = None,
        cache_start: int = 0,
        caches: list[tuple[KVCache, int, int]] | None = None,
    ) -> BlockOutput:
        """Run the decoder over P positions x K slots; returns pre-norm hiddens and the new K/V.

        Training passes earlier blocks' keys/values as `past`; drafting passes its `cache`
        instead: this call's keys/values are written there from slot `cache_start` and the
        mask covers cache slots [0, cache_start + P*K). `caches` instead: several requests'
        positions one after another, each request's (cache, start, rows) (`layers.CacheSlots`).
        """
        c = self.cfg
        b, p = tokens.shape
        k = c.block_size
        h = self.input_layer(condition, F.embedding(tokens, self.embed_tokens), inherited)
        slot_pos = (positions[:, :, None] + 1 + torch.arange(k, device=positions.device)).reshape(positions.shape[0], p * k)
        cos, sin = self.rotary.lookup(slot_pos, h.dtype)
        kv: list[KV] = []
        for n, layer in enumerate(self.layers):
            if n > 0 and c.layer_shift:
                h = self.shift(n, h)
            slot = None  # training: keys/values come back in `kv`
            if caches is not None:
                slot = CacheSlots(caches, n)
            elif cache is not None:
                slot = CacheSlot(cache, n, cache_start)
            out, layer_kv = layer(h.reshape(b, p * k, -1), cos, sin, mask, None if past is None else past[n], slot)
            h = out.view(b, p, k, -1)
            kv.append(layer_kv)
        return BlockOutput(hidden=h, kv=kv)

    def shift(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The layer-wise shift before `layer`, h <- shift_proj([h ; shift(h)]) (design §4).

        Unless `shift_slot0` (the design's form), slot 0, which has no earlier slot to receive,
        keeps its hidden unprojected: a projection shared with the later slots, and trained
        mostly by their losses, otherwise rewrites the residual stream slot 0 predicts from."""
        proj, name = self.shift_proj[layer - 1], f"shift{layer}"
        if self.cfg.shift_slot0:
            return drafting_linear(self, name, proj, torch.cat([h, shift_slots(h)], dim=-1))
        later = drafting_linear(self, name, proj, torch.cat([h[:, :, 1:], h[:, :, :-1]], dim=-1))
        return torch.cat([h[:, :, :1], later.to(h.dtype)], dim=2)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits from pre-norm hiddens."""
        return drafting_linear(self, "lm_head", self.lm_head, self.norm(hidden))

    def rank_logits(
        self, hidden: torch.Tensor, logits: torch.Tensor, top: torch.Tensor | None = None,
        vocab_lse: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Rank-class logits from the detached normed hidden and the 15 logit features (`top`,
        `vocab_lse`: see `rank_features`; drafting has them already)."""
        normed = self.norm(hidden).detach()
        x = torch.cat([normed, rank_features(logits.detach(), top, vocab_lse).to(normed.dtype)], dim=-1)
        first, act, last = self.rank_head
        return drafting_linear(self, "rank_out", last, act(drafting_linear(self, "rank_in", first, x)))


def rank_features(
    logits: torch.Tensor, top: torch.Tensor | None = None, vocab_lse: torch.Tensor | None = None
) -> torch.Tensor:
    """The rank head's 15 features of draft logits [..., V] (design §4), computed over the top 20
    in training and drafting alike: 10 top log-probs normalised by the top-20 logsumexp, the
    gaps top1-top2 / top1-top3 / top1-top5, the top-1 probability and the top-20 entropy.
    `top` (the float32 top-20 logits, descending) and `vocab_lse` (the logsumexp over the whole
    draft vocabulary, keepdim) may be passed in when the caller computed them anyway."""
    logits = logits.float()
    if top is None:
        top = logits.topk(min(20, logits.shape[-1]), dim=-1).values
    if vocab_lse is None:
        vocab_lse = logits.logsumexp(-1, keepdim=True)
    if top.shape[-1] < 20:  # tiny test vocabularies: pad with very low logits
        top = torch.cat([top, top.new_full((*top.shape[:-1], 20 - top.shape[-1]), -1e4)], dim=-1)
    lse = top.logsumexp(-1, keepdim=True)
    top_logp = top - lse
    gaps = torch.stack([top[..., 0] - top[..., 1], top[..., 0] - top[..., 2], top[..., 0] - top[..., 4]], dim=-1)
    p1 = (top[..., :1] - vocab_lse).exp()
    entropy = -(top_logp.exp() * top_logp).sum(-1, keepdim=True)
    return torch.cat([top_logp[..., :10], gaps, p1, entropy], dim=-1)


def rank_class(rank: torch.Tensor) -> torch.Tensor:
    """1-based rank -> class 0 (rank 1), 1 (2-4), 2 (5-10), 3 (>10 or absent)."""
    return (rank > 1).long() + (rank > 4).long() + (rank > 10).long()


def block_mask(positions: int, k: int, device=None) -> torch.Tensor:
    """[P*K, P*K] block-1 rule: slot (i, k) sees every slot of positions < i and slots 0..k of i."""
    pos = torch.arange(positions * k, device=device) // k
    slot = torch.arange(positions * k, device=device) % k
    return (pos[None, :] < pos[:, None]) | ((pos[None, :] == pos[:, None]) & (slot[None, :] <= slot[:, None]))
