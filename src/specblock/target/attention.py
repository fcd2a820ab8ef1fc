"""Attention of a forward over the rows of one or several requests (segments), each against its
own cache, all cache regions of one `KVPool`.

Two kernels, one per precision regime:

- `layout_invariant_attention` (half precision on a CPU whose products are row-invariant):
  a row's result depends only on its query and its logical key sequence, not on the tree
  around it nor on the other requests in the batch. So plain decoding, a tree verification
  and a batched verification of the same token give the same bits.
- `padded_attention` (otherwise): scaled-dot-product attention over the segments padded to
  one batch, equal to each segment alone up to rounding.

Layouts are built once per forward and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specblock.target.primitives import attend
from specblock.tree import DraftTree, verify_paths

ATTENTION_CHUNK = 32  # keys per reduction chunk, on a grid from logical position 0


def _per_row(values: list[int], sizes: list[int], device) -> torch.Tensor:
    return torch.repeat_interleave(torch.tensor(values, device=device), torch.tensor(sizes, device=device))


@dataclass
class Padding:
    """Segments of different row counts laid out as [segments, rows_max] (short ones padded by
    repeating their last row), and back."""

    segments: int
    rows_max: int
    padded_rows: torch.Tensor | None  # [segments * rows_max] row of each padded position; None: one segment
    row_in_padded: torch.Tensor | None  # [n] padded position of each row

    @classmethod
    def build(cls, sizes: list[int], device) -> "Padding":
        if len(sizes) == 1:
            return cls(1, sizes[0], None, None)
        rows_max, firsts = max(sizes), [sum(sizes[:b]) for b in range(len(sizes))]
        padded = [first + min(i, size - 1) for first, size in zip(firsts, sizes) for i in range(rows_max)]
        inverse = [b * rows_max + i for b, size in enumerate(sizes) for i in range(size)]
        return cls(len(sizes), rows_max, torch.tensor(padded, device=device), torch.tensor(inverse, device=device))

    def to_padded(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """[..., n, *rest] (rows at `dim`) -> [..., segments, rows_max, *rest]."""
        if self.padded_rows is None:
            return x.unsqueeze(dim)
        out = x.index_select(dim, self.padded_rows)
        return out.view(*x.shape[:dim], self.segments, self.rows_max, *x.shape[dim + 1 :])

    def from_padded(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """[..., segments, rows_max, *rest] -> [..., n, *rest]."""
        if self.padded_rows is None:
            return y.squeeze(dim)
        flat = y.reshape(*y.shape[:dim], self.segments * self.rows_max, *y.shape[dim + 2 :])
        return flat.index_select(dim, self.row_in_padded)


@dataclass
class BatchLayout:
    """Where each verify row's keys sit in the pool, by logical position (see
    `layout_invariant_attention`)."""

    shared: int  # S: context positions in whole chunks (the largest over segments; others masked)
    tail: int  # T: columns of the per-row tail (a multiple of the chunk)
    tail_slots: torch.Tensor  # [n * T] pool slot of each tail column
    tail_bias: torch.Tensor  # [n, 1, T] float32: 0 where a row may attend, -inf elsewhere
    shared_slots: torch.Tensor | None  # [segments * S] pool slots of the shared keys; None: one segment
    shared_offset: int  # one segment: its cache's offset in the pool
    shared_bias: torch.Tensor | None  # [segments, 1, S]: -inf past a segment's own shared context
    padding: Padding

    @classmethod
    def build(cls, starts: list[int], offsets: list[int], paths: list[torch.Tensor]) -> "BatchLayout":
        """Per segment: `starts` (committed context in its cache), `offsets` (its cache's place in
        the pool), `paths` ([n_b, D_b], each row's ancestors by depth as verify rows of the
        segment, -1 past the row's depth: `tree.verify_paths`)."""
        c, device = ATTENTION_CHUNK, paths[0].device
        sizes, depths = [p.shape[0] for p in paths], [p.shape[1] for p in paths]
        depth = max(depths)
        shareds = [(s // c) * c for s in starts]
        shared = max(shareds)
        tail = max(-(-(s - sh + d) // c) * c for s, sh, d in zip(starts, shareds, depths))
        padded_paths = torch.cat([torch.nn.functional.pad(p, (0, depth - p.shape[1]), value=-1) for p in paths])
        start, row_shared, offset = (_per_row(v, sizes, device)[:, None] for v in (starts, shareds, offsets))
        j = torch.arange(tail, device=device)[None, :]
        from_context = j < start - row_shared
        tree_depth = j - (start - row_shared)  # the depth a tail column holds, where it holds a tree row
        ancestor = padded_paths.gather(1, tree_depth.clamp(0, depth - 1))  # [n, tail]
        valid = from_context | ((tree_depth >= 0) & (tree_depth < depth) & (ancestor >= 0))
        slots = torch.where(from_context, row_shared + j, start + ancestor.clamp(min=0))
        slots = torch.where(valid, slots, torch.zeros_like(slots)) + offset
        bias = torch.zeros(len(slots), 1, tail, device=device).masked_fill(~valid[:, None, :], float("-inf"))
        shared_slots = shared_bias = None
        if len(paths) > 1 and shared:
            s = torch.arange(shared, device=device)[None, :]
            shared_slots = (torch.tensor(offsets, device=device)[:, None] + s).reshape(-1)
            inside = s < torch.tensor(shareds, device=device)[:, None]
            shared_bias = torch.zeros(len(paths), 1, shared, device=device).masked_fill(~inside[:, None, :], float("-inf"))
        return cls(shared, tail, slots.reshape(-1), bias, shared_slots, offsets[0], shared_bias, Padding.build(sizes, device))

    def shared_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """[kv, segments, S, d] shared context keys (or values) of each segment."""
        if self.shared_slots is None:
            return keys[:, self.shared_offset : self.shared_offset + self.shared].unsqueeze(1)
        return keys.index_select(1, self.shared_slots).view(keys.shape[0], -1, self.shared, keys.shape[-1])


def _rows_matmul(a: torch.Tensor, b: torch.Tensor, min_rows: int) -> torch.Tensor:
    """a @ b with a's row dimension (-2) padded to at least `min_rows` rows: the products of
    this module then all run the row-invariant kernel the kernel table chose."""
    rows = a.shape[-2]
    if rows >= min_rows:
        return torch.matmul(a, b)
    pad = a.new_zeros(*a.shape[:-2], min_rows - rows, a.shape[-1])
    return torch.matmul(torch.cat([a, pad], dim=-2), b)[..., :rows, :]


def layout_invariant_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, layout: BatchLayout, min_rows: int = 2
) -> torch.Tensor:
    """Attention of a verify forward whose result for a row depends only on that row's query and
    its logical key sequence (its context, then its ancestors by depth).

    q: [heads, n, d], roped, the rows of every segment; keys/values: [kv_heads, P, d], this
    layer's pool, with this forward's rows already written to their caches.

    Why: a tree row and the same token decoded alone see the same keys, but at other columns of
    the mask, and reductions whose order follows the columns round differently. Here every row's
    keys are laid out by logical position: the shared context in chunks of ATTENTION_CHUNK on a
    grid from position 0 (one batched product per segment; a shorter context's extra chunks are
    masked, so they add exact zeros), then a per-row tail gathered from the context's end and the
    row's ancestors. Scores and chunk outputs are half-precision products padded to the row count
    the kernel table found row-invariant (`min_rows`); each chunk is reduced on its own and the
    chunks are summed in order. So plain decoding (one segment, n = 1, paths [[0]]) computes
    exactly what a tree row, alone or batched with other requests, computes.
    """
    heads, n, d = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    c, shared, tail, pad = ATTENTION_CHUNK, layout.shared, layout.tail, layout.padding
    tail_keys = keys.index_select(1, layout.tail_slots).view(kv_heads, n, tail, d)
    tail_values = values.index_select(1, layout.tail_slots).view(kv_heads, n, tail // c, c, d)
    qg = q.view(kv_heads, group, n, d).transpose(1, 2)  # [kv, n, g, d]
    scores = _rows_matmul(qg, tail_keys.transpose(-1, -2), min_rows).float() + layout.tail_bias  # [kv, n, g, tail]
    if shared:
        segments, rows = pad.segments, pad.rows_max
        q_padded = pad.to_padded(qg).reshape(kv_heads, segments, rows * group, d)
        scores_shared = _rows_matmul(q_padded, layout.shared_keys(keys).transpose(-1, -2), min_rows).float()
        if layout.shared_bias is not None:
            scores_shared = scores_shared + layout.shared_bias
        scores_shared = pad.from_padded(scores_shared.view(kv_heads, segments, rows, group, shared))
        scores = torch.cat([scores_shared, scores], dim=-1)
    weights = torch.exp((scores - scores.amax(-1, keepdim=True)) * d**-0.5)  # [kv, n, g, shared + tail]
    chunks = weights.shape[-1] // c
    norm = weights.view(kv_heads, n, group, chunks, c).sum(-1).cumsum(-1)[..., -1:]  # [kv, n, g, 1]
    probs = weights.to(q.dtype)
    p_tail = probs[..., shared:].reshape(kv_heads, n, group, tail // c, c).transpose(2, 3)
    parts = _rows_matmul(p_tail, tail_values, min_rows).transpose(2, 3)  # [kv, n, g, tail chunks, d]
    if shared:
        sc = shared // c
        p_shared = pad.to_padded(probs[..., :shared]).reshape(kv_heads, segments, rows * group, sc, c).transpose(2, 3)
        v_shared = layout.shared_keys(values).reshape(kv_heads, segments, sc, c, d)
        out_shared = _rows_matmul(p_shared, v_shared, min_rows)  # [kv, segments, sc, rows * g, d]
        out_shared = out_shared.view(kv_heads, segments, sc, rows, group, d).permute(0, 1, 3, 4, 2, 5)
        parts = torch.cat([pad.from_padded(out_shared), parts], dim=3)  # [kv, n, g, chunks, d]
    out = parts.float().cumsum(3)[..., -1, :] / norm  # chunks summed in order: [kv, n, g, d]
    return out.to(q.dtype).transpose(1, 2).reshape(heads, n, d)


@dataclass
class PaddedBatch:
    """Segments padded to one [segments, rows_max] x [segments, keys_max] attention batch."""

    key_slots: torch.Tensor  # [segments * keys_max] pool slot of each key column
    mask: torch.Tensor  # [segments, 1, rows_max, keys_max] bool, True = may attend
    keys_max: int
    padding: Padding

    @classmethod
    def build(cls, starts: list[int], offsets: list[int], masks: list[torch.Tensor | None], sizes: list[int], device):
        """`masks[b]`: segment b's [n_b, start_b + n_b] mask, or None for causal."""
        ends = [s + n for s, n in zip(starts, sizes)]
        keys_max, rows_max = max(ends), max(sizes)
        mask = torch.zeros(len(sizes), 1, rows_max, keys_max, dtype=torch.bool, device=device)
        for b, (start, size, end, m) in enumerate(zip(starts, sizes, ends, masks)):
            if m is None:
                m = torch.ones(size, end, dtype=torch.bool, device=device).tril(diagonal=start)
            mask[b, 0, :size, :end] = m
            mask[b, 0, size:, 0] = True  # padded rows attend somewhere (their output is dropped)
        slots = (torch.tensor(offsets, device=device)[:, None] + torch.arange(keys_max, device=device)[None, :])
        return cls(slots.reshape(-1), mask, keys_max, Padding.build(sizes, device))


def padded_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, batch: PaddedBatch) -> torch.Tensor:
    """q [heads, n, d] of every segment against keys/values [kv, P, d] (the pool) -> [heads, n, d]."""
    heads, n, d = q.shape
    kv_heads, pad = keys.shape[0], batch.padding
    q_padded = pad.to_padded(q).transpose(0, 1)  # [segments, heads, rows_max, d]
    k = keys.index_select(1, batch.key_slots).view(kv_heads, pad.segments, batch.keys_max, d).transpose(0, 1)
    v = values.index_select(1, batch.key_slots).view(kv_heads, pad.segments, batch.keys_max, d).transpose(0, 1)
    out = attend(q_padded, k, v, batch.mask)  # [segments, heads, rows_max, d]
    return pad.from_padded(out.transpose(0, 1))


def attention_is_layout_invariant(dtype: torch.dtype, min_rows: int) -> bool:
    """Whether `layout_invariant_attention` gives each row of a branching tree, alone and batched
    with another request, exactly what plain decoding of that row's token gives, on this machine,
    in `dtype` (the kernel table's probe).

    The tree has a chain with a sibling at every depth, starting after 58 context positions so
    that the chain crosses a chunk boundary (64) and both the shared and the per-row paths run.
    The batch puts a second request with 100 context positions and 3 rows beside it.
    """
    gen = torch.Generator().manual_seed(0)
    kv_heads, group, d, start, depth, other_start = 2, 3, 64, 58, 10, 100
    tree, chain = DraftTree(), [0]  # chain: verify rows of the root and the chain nodes
    for _ in range(depth - 1):
        tree.add(1, chain[-1] - 1)  # a sibling, then the chain node (draft node i is verify row i + 1)
        chain.append(tree.add(2, chain[-1] - 1) + 1)
    paths = verify_paths(tree)
    other_paths = verify_paths(DraftTree([5, 6], [-1, 0], [0.0, 0.0]))
    n, other_n = len(tree) + 1, len(other_paths)
    capacity = other_start + other_n
    keys = torch.randn(kv_heads, 2 * capacity, d, generator=gen).to(dtype)  # a pool of two caches
    values = torch.randn(kv_heads, 2 * capacity, d, generator=gen).to(dtype)
    q = torch.randn(kv_heads * group, n + other_n, d, generator=gen).to(dtype)
    alone_tree = layout_invariant_attention(q[:, :n], keys, values, BatchLayout.build([start], [0], [paths]), min_rows)
    batched = layout_invariant_attention(
        q, keys, values, BatchLayout.build([start, other_start], [0, capacity], [paths, other_paths]), min_rows
    )
    for t, row in enumerate(chain):
        slots = torch.cat([torch.arange(start), start + torch.tensor(chain[: t + 1])])
        one = BatchLayout.build([start + t], [0], [torch.tensor([[0]])])
        alone = layout_invariant_attention(q[:, row : row + 1], keys[:, slots], values[:, slots], one, min_rows)
        if not (torch.equal(alone[:, 0], alone_tree[:, row]) and torch.equal(alone[:, 0], batched[:, row])):
            return False
    return True
