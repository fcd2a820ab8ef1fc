"""Trainable Llama-style building blocks shared by the SpecBlock and EAGLE-3 drafters.

The math is `target/primitives.py`'s, the same the target runs. Parameter names follow
Hugging Face Llama (`self_attn.q_proj`, `mlp.gate_proj`, ...), so checkpoints keep the key
names other engines expect. Attention takes an explicit boolean mask, because both drafters
attend in patterns a causal mask cannot express (or `CAUSAL` where one call's rows are the
whole story: a first pass, training block 1 / step 0), and either earlier keys/values
(training: an earlier block's) or a preallocated cache the new keys/values are written into in
place (drafting).

Drafting runs under inference mode in the target's dtype: `InferenceWeights` keeps fused copies
(q|k|v, gate|up) of the trainable fp32 matrices in that dtype, in the kernel's layout, rebuilt
only when a weight changed (an online-adaptation update), so a drafting call never converts a
matrix (the small norm and query vectors are cast as they are used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specblock.target.kernels import Linear
from specblock.target.kv_cache import KVCache
from specblock.target.primitives import CAUSAL, Causal, RMSNorm, RotaryTable, apply_rope, attend, gated_mlp, inverse_frequencies, swiglu

KV = tuple[torch.Tensor, torch.Tensor]

__all__ = ["KV", "RMSNorm", "Attention", "MLP", "DecoderLayer", "CacheSlot", "DrafterRotary", "InferenceWeights",
           "drafting_linear", "target_shaped"]


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


class InferenceWeights:
    """Fused, dtype-cast copies of some nn.Linear weights for drafting, refreshed when the
    source parameters change (their in-place version counters move on every optimizer step
    and every state-dict load)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[tuple, Linear]] = {}

    def get(self, name: str, linears: list[nn.Linear], dtype: torch.dtype, columns: slice | None = None) -> Linear:
        """The rows of `linears` stacked, in `dtype`; only input `columns` of them if given."""
        assert all(lin.bias is None for lin in linears), "drafter projections have no biases"
        weights = [lin.weight for lin in linears]
        span = None if columns is None else (columns.start, columns.stop)
        stamp = (dtype, weights[0].device, span, *(id(w) for w in weights), *(w._version for w in weights))
        made = self._made.get(name)
        if made is None or made[0] != stamp:
            fused = torch.cat([w.detach() for w in weights])
            fused = (fused if columns is None else fused[:, columns]).contiguous().to(dtype)
            made = (stamp, Linear(fused))
            self._made[name] = made
        return made[1]


def _drafting() -> bool:
    """Drafting (which runs under inference mode) uses the fused inference weights in the input's
    dtype; training and its no-grad evaluations use the trainable weights themselves."""
    return torch.is_inference_mode_enabled()


class CacheSlot:
    """Where a drafting call writes its keys/values: one layer of a KVCache, from slot `start`;
    the call then attends over cache slots [0, start + n)."""

    def __init__(self, cache: KVCache, layer: int, start: int) -> None:
        self.cache, self.layer, self.start = cache, layer, start

    def write_and_view(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's k/v [1, kv_heads, n, d]; return the keys/values to attend over."""
        self.cache.write(self.layer, self.start, k[0], v[0])
        return self.cache.view(self.layer, self.start + k.shape[2])


class CacheSlots:
    """Several requests' caches in one drafting call (the server's batch): `parts` lists each
    request's (cache, start, rows) in row order. Its rows go to its cache from `start`; the call
    attends over every request's slots [0, start + rows), side by side, and the caller's mask
    keeps each request to its own."""

    def __init__(self, parts: list[tuple[KVCache, int, int]], layer: int) -> None:
        self.parts, self.layer = parts, layer

    def write_and_view(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values, offset = [], [], 0
        for cache, start, rows in self.parts:
            cache.write(self.layer, start, k[0, :, offset : offset + rows], v[0, :, offset : offset + rows])
            own_keys, own_values = cache.view(self.layer, start + rows)
            keys.append(own_keys)
            values.append(own_values)
            offset += rows
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)


class Attention(nn.Module):
    """Grouped-query attention over [past keys ; own keys] with a boolean mask (True = attend) or
    `CAUSAL` (own keys only)."""

    def __init__(self, in_size: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(in_size, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(in_size, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(in_size, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.inference = InferenceWeights()

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if _drafting():
            qkv = self.inference.get("qkv", [self.q_proj, self.k_proj, self.v_proj], x.dtype)(x)
            q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
            return qkv.split([q_size, kv_size, kv_size], dim=-1)
        x = x.to(self.q_proj.weight.dtype)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,  # [B, n, in]
        cos: torch.Tensor,  # [B or 1, n, head_dim]
        sin: torch.Tensor,
        mask: torch.Tensor | Causal,  # [B or 1, n, past + n] bool, or CAUSAL (no past, no cached keys)
        past: KV | None = None,  # ([B, kv_heads, past, d], same) in training
        cache: CacheSlot | CacheSlots | None = None,  # drafting (B = 1): write own K/V there, attend over the cache
    ) -> tuple[torch.Tensor, KV]:
        """Returns the attention output and this call's own (roped) keys and values."""
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        q = apply_rope(q.view(b, n, self.heads, self.head_dim).transpose(1, 2), cos[:, None], sin[:, None])
        k = apply_rope(k.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), cos[:, None], sin[:, None])
        v = v.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if mask is CAUSAL and (past is not None or isinstance(cache, CacheSlots)):
            raise ValueError("CAUSAL is for one call's own rows: not with earlier keys or several requests' caches")
        if cache is not None:
            keys, values = cache.write_and_view(k, v)
        elif past is None:
            keys, values = k, v
        else:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = attend(q, keys, values, mask if mask is CAUSAL else mask[:, None])
        return drafting_linear(self, "o", self.o_proj, out.transpose(1, 2).reshape(b, n, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.inference = InferenceWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _drafting():
            gate_up = self.inference.get("gate_up", [self.gate_proj, self.up_proj], x.dtype)
            return gated_mlp(x, gate_up, self.inference.get("down", [self.down_proj], x.dtype))
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))  # training: no fused copy to make


class DrafterRotary:
    """A drafter's RoPE table per (dtype, device), built once and grown as positions grow."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.inv_freq = inverse_frequencies(head_dim, theta)
        self._tables: dict[tuple, RotaryTable] = {}

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, positions.device)
        if key not in self._tables:
            self._tables[key] = RotaryTable(self.inv_freq, dtype, positions.device)
        return self._tables[key].lookup(positions)


class DecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer (SpecBlock's layers)."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(hidden, hidden, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, x, cos, sin, mask, past: KV | None = None, cache: CacheSlot | None = None) -> tuple[torch.Tensor, KV]:
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def drafting_linear(
    module: nn.Module, name: str, linear: nn.Linear, x: torch.Tensor, columns: slice | None = None
) -> torch.Tensor:  # fmt: skip
    """A single nn.Linear applied through its inference copy when drafting (lm_head, fc, fuse, ...);
    `columns`: only those input columns of its weight (x is that wide), a part of a product."""
    if _drafting():
        store = module.__dict__.setdefault("_inference_weights", InferenceWeights())
        return store.get(name, [linear], x.dtype, columns)(x)
    assert linear.bias is None, "drafter projections have no biases"
    weight = linear.weight if columns is None else linear.weight[:, columns]
    return F.linear(x.to(weight.dtype), weight)
