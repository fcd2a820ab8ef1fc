"""The transformer primitives, written once: RMSNorm, rotary embeddings, attention over a
cache, the gated MLP. The target (`transformer.py`), the SpecBlock drafter and the EAGLE-3
drafter all call these, so a fix or a faster kernel reaches all three.

The math follows the Hugging Face Llama reference: RMSNorm normalises in float32 and casts
back before the weight multiplies, RoPE rotates halves (`rotate_half`), the MLP is
SiLU(gate) * up -> down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, normalised in float32, weighted in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    """Trainable RMSNorm (the drafters' norms); the weight is named as Hugging Face names it."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight.to(x.dtype), self.eps)


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """Plain (unscaled) RoPE inverse frequencies, float32, as Hugging Face computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


class RotaryTable:
    """cos/sin of every position up to a growing maximum, computed in float32 once and kept in
    the compute dtype, so a forward only indexes it (no trigonometry per call)."""

    def __init__(self, inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> None:
        self.inv_freq = inv_freq.to(device=device, dtype=torch.float32)
        self.dtype = dtype
        self.device = torch.device(device)
        dim = 2 * inv_freq.numel()
        self.cos = torch.empty(0, dim, dtype=dtype, device=self.device)
        self.sin = torch.empty(0, dim, dtype=dtype, device=self.device)

    def reserve(self, size: int) -> None:
        """Make positions [0, size) available (callers that know their length ask once)."""
        if size <= self.cos.shape[0]:
            return
        size = max(size, 2 * self.cos.shape[0], 256)
        t = torch.arange(size, device=self.device, dtype=torch.float32)
        freqs = t[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def lookup(self, positions: torch.Tensor, max_position: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [*positions.shape, head_dim]; `max_position` spares a device sync."""
        self.reserve((int(positions.max()) if max_position is None else max_position) + 1)
        return self.cos[positions], self.sin[positions]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; cos/sin broadcast against x's [..., n, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Causal:
    """The mask "row r sees rows 0..r of this call, and nothing before them" (`CAUSAL`).

    Passed where a boolean mask goes, it lets SDPA run its fused causal kernel, which skips the
    masked half and never materialises an n x n mask. Both drafters' long first passes have
    this shape: SpecBlock's block-1 rule over position-major rows (slot (i, k) sees the slots
    of positions < i and slots 0..k of i) is exactly causal over the flattened rows, and
    EAGLE-3's first step is plain causal attention."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = Causal()


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | Causal | None
) -> torch.Tensor:  # fmt: skip
    """Grouped-query attention of q [B, heads, n, d] over keys/values [B, kv_heads, T, d]
    with a boolean mask broadcastable to [B, heads, n, T] (True = may attend; None = all;
    `CAUSAL`: causal over the call's own rows, T = n)."""
    gqa = q.shape[1] != keys.shape[1]
    if mask is CAUSAL:
        if keys.shape[2] != q.shape[2]:
            raise ValueError(f"a causal call attends over its own {q.shape[2]} rows, not {keys.shape[2]} keys")
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation, SiLU(gate) * up."""
    return F.silu(gate) * up


def gated_mlp(x: torch.Tensor, gate_up, down, exact: bool = False) -> torch.Tensor:
    """down(SiLU(gate) * up) with gate and up fused in one product (`gate_up` returns both
    halves); `exact` goes to both products (`kernels.Linear`)."""
    gate, up = gate_up(x, exact).chunk(2, dim=-1)
    return down(swiglu(gate, up), exact)
