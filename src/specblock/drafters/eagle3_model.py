"""The EAGLE-3 drafter network (design §7), the baseline SpecBlock must beat.

`fc` fuses the three target features (3H_t -> H); one decoder layer (`midlayer`) whose
attention input is [input_layernorm(embed(token)) ; hidden_norm(hidden)] (2H wide,
embedding half first), with the residual taken from the hidden; `norm` + `lm_head` over the
draft vocabulary. Key names are those SGLang and vLLM load for EAGLE-3.

A row pairs a hidden state (fused target features, or the drafter's own previous output)
with the token that follows it; its pre-norm output is the next step's hidden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specblock.drafters.layers import KV, MLP, Attention, CacheSlot, DrafterRotary, RMSNorm, drafting_linear, target_shaped
from specblock.target.kv_cache import KVCache
from specblock.target.primitives import Causal


@dataclass
class Eagle3Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    target_hidden_size: int
    target_vocab_size: int
    draft_vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    ttt_steps: int = 7

    @classmethod
    def for_target(cls, target_cfg, draft_vocab_size: int, **overrides) -> "Eagle3Config":
        return cls(**(target_shaped(target_cfg, draft_vocab_size) | overrides))

    def to_dict(self) -> dict:
        return {"architectures": ["Eagle3Drafter"], "method": "eagle3", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Eagle3Config":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Eagle3Layer(nn.Module):
    def __init__(self, c: Eagle3Config) -> None:
        super().__init__()
        h = c.hidden_size
        self.input_layernorm = RMSNorm(h, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, c.rms_norm_eps)
        self.self_attn = Attention(2 * h, h, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        self.post_attention_layernorm = RMSNorm(h, c.rms_norm_eps)
        self.mlp = MLP(h, c.intermediate_size)

    def forward(self, embeds, hidden, cos, sin, mask, past: KV | None = None, cache: CacheSlot | None = None) -> tuple[torch.Tensor, KV]:
        x = torch.cat([self.input_layernorm(embeds.to(hidden.dtype)), self.hidden_norm(hidden)], dim=-1)
        attn, kv = self.self_attn(x, cos, sin, mask, past, cache)
        h = hidden + attn
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class Eagle3Model(nn.Module):
    def __init__(self, cfg: Eagle3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("embed_tokens", torch.zeros(0, cfg.hidden_size), persistent=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(cfg.target_vocab_size, dtype=torch.bool))
        self.rotary = DrafterRotary(cfg.head_dim, cfg.rope_theta)

    def step(
        self,
        hidden: torch.Tensor,  # [B, n, 3H_t] target features (fused=False) or [B, n, H] drafter hiddens
        tokens: torch.Tensor,  # [B, n]
        positions: torch.Tensor,  # [B or 1, n] RoPE positions
        mask: torch.Tensor | Causal,  # [B or 1, n, past + n] bool, or CAUSAL (causal, nothing before)
        past: KV | None = None,
        fused: bool = False,
        cache: KVCache | None = None,
        cache_start: int = 0,
    ) -> tuple[torch.Tensor, KV]:
        """One drafter pass: returns the pre-norm outputs [B, n, H] and this pass's K/V.

        Training passes earlier keys/values as `past`; drafting passes its `cache`, into which
        this pass's keys/values are written from slot `cache_start` (the mask then covers cache
        slots [0, cache_start + n))."""
        h = hidden if fused else drafting_linear(self, "fc", self.fc, hidden)
        cos, sin = self.rotary.lookup(positions, h.dtype)
        slot = None if cache is None else CacheSlot(cache, 0, cache_start)
        return self.midlayer(F.embedding(tokens, self.embed_tokens), h, cos, sin, mask, past, slot)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return drafting_linear(self, "lm_head", self.lm_head, self.norm(hidden))
