"""Trainable Llama-style building blocks shared by the SpecBlock and EAGLE-3 drafters.

Parameter names follow Hugging Face Llama (`self_attn.q_proj`, `mlp.gate_proj`, ...), so
checkpoints keep the key names other engines expect. Attention takes an explicit boolean
mask and optional keys/values computed earlier (a cache or an earlier training block),
because both drafters attend in patterns a causal mask cannot express.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [..., head_dim] for integer positions of any shape."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


KV = tuple[torch.Tensor, torch.Tensor]


def target_shaped(target_cfg, draft_vocab_size: int) -> dict:
    """Config fields of a drafter shaped like its target (hidden size, heads, MLP width)."""
    return {
        "hidden_size": target_cfg.hidden_size,
        "intermediate_size": target_cfg.intermediate_size,
        "num_attention_heads": target_cfg.num_heads,
        "num_key_value_heads": target_cfg.num_kv_heads,
        "head_dim": target_cfg.head_dim,
        "target_hidden_size": target_cfg.hidden_size,
        "target_vocab_size": target_cfg.vocab_size,
        "draft_vocab_size": draft_vocab_size,
        "rms_norm_eps": target_cfg.rms_norm_eps,
    }


class Attention(nn.Module):
    """Grouped-query attention over [past keys ; own keys] with a boolean mask (True = attend)."""

    def __init__(self, in_size: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(in_size, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(in_size, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(in_size, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [B, n, in]
        cos: torch.Tensor,  # [B or 1, n, head_dim]
        sin: torch.Tensor,
        mask: torch.Tensor,  # [B or 1, n, past + n] bool
        past: KV | None = None,  # ([B, kv_heads, past, d], same)
    ) -> tuple[torch.Tensor, KV]:
        """Returns the attention output and this call's own (roped) keys and values."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos[:, None], sin[:, None])
        k = apply_rope(k, cos[:, None], sin[:, None])
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer (SpecBlock's layers)."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(hidden, hidden, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, x, cos, sin, mask, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv
