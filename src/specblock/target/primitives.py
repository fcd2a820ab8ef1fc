"""The transformer primitives, written once: RMSNorm, rotary embeddings, attention over a
cache, the gated MLP. The target (`transformer.py`), the SpecBlock drafter and the EAGLE-3
drafter all call these, so a fix or a faster kernel reaches all three.

The math follows the Hugging Face Llama reference: RMSNorm normalises in float32 and casts
back before the weight multiplies, RoPE rotates halves (`rotate_half`), the MLP is
SiLU(gate) * up -> down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specblock.tree import DraftTree, verify_paths


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


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention of q [B, heads, n, d] over keys/values [B, kv_heads, T, d]
    with a boolean mask broadcastable to [B, heads, n, T] (True = may attend; None = all)."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1])


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation, SiLU(gate) * up."""
    return F.silu(gate) * up


def gated_mlp(x: torch.Tensor, gate_up, down) -> torch.Tensor:
    """down(SiLU(gate) * up) with gate and up fused in one product (`gate_up` returns both halves)."""
    gate, up = gate_up(x).chunk(2, dim=-1)
    return down(swiglu(gate, up))


ATTENTION_CHUNK = 32  # keys per reduction chunk, on a grid from logical position 0


@dataclass
class TreeLayout:
    """Where each verify row's keys sit, by logical position (see `layout_invariant_attention`);
    built once per forward, shared by every layer."""

    start: int  # cache slots before this forward's rows (the committed context)
    shared: int  # context positions in whole chunks, the same keys for every row
    tail: int  # columns of the per-row tail (a multiple of the chunk)
    slots: torch.Tensor  # [n * tail] cache slot of each tail column
    bias: torch.Tensor  # [n, 1, tail] float32: 0 where a row may attend, -inf elsewhere

    @classmethod
    def build(cls, start: int, paths: torch.Tensor) -> "TreeLayout":
        """`paths` [n, D]: each row's ancestors by depth as verify rows (`tree.verify_paths`)."""
        n, depth = paths.shape
        c = ATTENTION_CHUNK
        shared = (start // c) * c
        tail = -(-(start - shared + depth) // c) * c
        j = torch.arange(tail, device=paths.device)
        from_context = j < start - shared
        tree_depth = j - (start - shared)  # the depth a tail column holds, where it holds a tree row
        ancestor = paths[:, tree_depth.clamp(0, depth - 1)]  # [n, tail]
        in_tree = (tree_depth >= 0) & (tree_depth < depth)
        valid = from_context[None, :] | (in_tree[None, :] & (ancestor >= 0))
        slots = torch.where(from_context[None, :], shared + j[None, :], start + ancestor.clamp(min=0))
        slots = torch.where(valid, slots, torch.zeros_like(slots)).reshape(-1)
        bias = torch.zeros(n, 1, tail, device=paths.device).masked_fill(~valid[:, None, :], float("-inf"))
        return cls(start, shared, tail, slots, bias)


def _rows_matmul(a: torch.Tensor, b: torch.Tensor, min_rows: int) -> torch.Tensor:
    """a @ b with a's row dimension (-2) padded to at least `min_rows` rows: the products of
    this module then all run the row-invariant kernel the kernel table chose."""
    rows = a.shape[-2]
    if rows >= min_rows:
        return torch.matmul(a, b)
    pad = a.new_zeros(*a.shape[:-2], min_rows - rows, a.shape[-1])
    return torch.matmul(torch.cat([a, pad], dim=-2), b)[..., :rows, :]


def layout_invariant_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, layout: TreeLayout, min_rows: int = 2
) -> torch.Tensor:
    """Attention of a verify forward whose result for a row depends only on that row's query and
    its logical key sequence (the context, then its ancestors by depth), not on the tree around it.

    q: [heads, n, d], roped; keys/values: [kv_heads, T, d], this layer's cache, with this
    forward's n rows at slots [start, start + n).

    Why: a tree row and the same token decoded alone see the same keys, but at other columns of
    the mask, and reductions whose order follows the columns round differently. Here every row's
    keys are laid out by logical position: the shared context in chunks of ATTENTION_CHUNK on a
    grid from position 0, then a per-row tail gathered from the context's end and the row's
    ancestors. Scores and chunk outputs are half-precision products, padded to the row count
    the kernel table found row-invariant (`min_rows`); each chunk is reduced on its own and the
    chunks are summed in order. So plain decoding (n = 1, paths [[0]]) computes exactly what a
    tree row computes.
    """
    heads, n, d = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    c, shared, tail = ATTENTION_CHUNK, layout.shared, layout.tail
    tail_keys = keys.index_select(1, layout.slots).view(kv_heads, n, tail, d)
    tail_values = values.index_select(1, layout.slots).view(kv_heads, n, tail // c, c, d)
    qg = q.view(kv_heads, group, n, d).transpose(1, 2)  # [kv, n, g, d]
    scores = _rows_matmul(qg, tail_keys.transpose(-1, -2), min_rows).float() + layout.bias  # [kv, n, g, tail]
    if shared:
        flat_q = qg.reshape(kv_heads, n * group, d)
        scores_shared = _rows_matmul(flat_q, keys[:, :shared].transpose(-1, -2), min_rows).float()
        scores = torch.cat([scores_shared.view(kv_heads, n, group, shared), scores], dim=-1)
    weights = torch.exp((scores - scores.amax(-1, keepdim=True)) * d**-0.5)  # [kv, n, g, shared + tail]
    chunks = weights.shape[-1] // c
    norm = weights.view(kv_heads, n, group, chunks, c).sum(-1).cumsum(-1)[..., -1:]  # [kv, n, g, 1]
    probs = weights.to(q.dtype)
    p_tail = probs[..., shared:].reshape(kv_heads, n, group, tail // c, c).transpose(2, 3)
    parts = _rows_matmul(p_tail, tail_values, min_rows).transpose(2, 3)  # [kv, n, g, tail chunks, d]
    if shared:
        sc = shared // c
        p_shared = probs[..., :shared].reshape(kv_heads, n * group, sc, c).transpose(1, 2)  # [kv, sc, n*g, c]
        out_shared = _rows_matmul(p_shared, values[:, :shared].reshape(kv_heads, sc, c, d), min_rows)
        out_shared = out_shared.view(kv_heads, sc, n, group, d).permute(0, 2, 3, 1, 4)  # [kv, n, g, sc, d]
        parts = torch.cat([out_shared, parts], dim=3)
    out = parts.float().cumsum(3)[..., -1, :] / norm  # chunks summed in order: [kv, n, g, d]
    return out.to(q.dtype).transpose(1, 2).reshape(heads, n, d)


def attention_is_layout_invariant(dtype: torch.dtype, min_rows: int) -> bool:
    """Whether `layout_invariant_attention` gives each row of a branching tree exactly what plain
    decoding of that row's token gives, on this machine, in `dtype` (the kernel table's probe).

    The tree has a chain with a sibling at every depth, starting after 58 context positions so
    that the chain crosses a chunk boundary (64) and both the shared and the per-row paths run.
    """
    gen = torch.Generator().manual_seed(0)
    kv_heads, group, d, start, depth = 2, 3, 64, 58, 10
    tree, chain = DraftTree(), [0]  # chain: verify rows of the root and the chain nodes
    for _ in range(depth - 1):
        tree.add(1, chain[-1] - 1)  # a sibling, then the chain node (draft node i is verify row i + 1)
        chain.append(tree.add(2, chain[-1] - 1) + 1)
    paths = verify_paths(tree)
    n = len(tree) + 1
    keys = torch.randn(kv_heads, start + n, d, generator=gen).to(dtype)
    values = torch.randn(kv_heads, start + n, d, generator=gen).to(dtype)
    q = torch.randn(kv_heads * group, n, d, generator=gen).to(dtype)
    together = layout_invariant_attention(q, keys, values, TreeLayout.build(start, paths), min_rows)
    for t, row in enumerate(chain):
        slots = torch.cat([torch.arange(start), start + torch.tensor(chain[: t + 1])])
        alone = layout_invariant_attention(
            q[:, row : row + 1], keys[:, slots], values[:, slots], TreeLayout.build(start + t, torch.tensor([[0]])), min_rows
        )
        if not torch.equal(alone[:, 0], together[:, row]):
            return False
    return True
