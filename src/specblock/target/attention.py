"""Attention of a forward over the rows of one or several requests (segments), each against its
own cache, all cache regions of one `KVPool`.

Two kernels:

- `layout_invariant_attention` (a CPU whose products are row-invariant in the model's dtype):
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

    tail: int  # T: columns of the per-row tail (a multiple of the chunk), the largest over segments
    tail_slots: torch.Tensor  # [n * T] pool slot of each tail column
    tail_bias: torch.Tensor  # [n, 1, T] float32: 0 where a row may attend, -inf elsewhere
    chunks: int  # shared context chunks of all segments together
    chunks_max: int  # the most shared chunks of one segment
    chunk_ids: torch.Tensor | None  # [chunks] pool chunk of each (segment by segment); None: one segment
    chunk_offset: int  # one segment: its first pool chunk
    chunk_segment: torch.Tensor | None  # [chunks] the segment each chunk belongs to
    chunk_cell: torch.Tensor | None  # [chunks] its cell in the [segments, chunks_max] grid
    padding: Padding

    @classmethod
    def build(cls, starts: list[int], offsets: list[int], paths: list[torch.Tensor]) -> "BatchLayout":
        """Per segment: `starts` (committed context in its cache), `offsets` (its cache's place in
        the pool, a multiple of the chunk), `paths` ([n_b, D_b], each row's ancestors by depth as
        verify rows of the segment, -1 past the row's depth: `tree.verify_paths`)."""
        c, device = ATTENTION_CHUNK, paths[0].device
        if any(o % c for o in offsets):
            raise ValueError(f"cache offsets in the pool must be multiples of {c}")
        sizes, depths = [p.shape[0] for p in paths], [p.shape[1] for p in paths]
        depth = max(depths)
        shareds = [(s // c) * c for s in starts]
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
        counts = [sh // c for sh in shareds]
        chunks_max = max(counts)
        ids = segment = cell = None
        if len(paths) > 1:
            ids = torch.tensor([o // c + i for o, k in zip(offsets, counts) for i in range(k)], dtype=torch.long, device=device)
            segment = torch.tensor([b for b, k in enumerate(counts) for _ in range(k)], dtype=torch.long, device=device)
            cell = torch.tensor([b * chunks_max + i for b, k in enumerate(counts) for i in range(k)], dtype=torch.long,
                                device=device)  # fmt: skip
        return cls(tail, slots.reshape(-1), bias, sum(counts), chunks_max, ids, offsets[0] // c, segment, cell,
                   Padding.build(sizes, device))  # fmt: skip

    def shared_chunks(self, keys: torch.Tensor) -> torch.Tensor:
        """[kv, chunks, c, d]: the shared context keys (or values) of every segment, by chunk."""
        c, kv, d = ATTENTION_CHUNK, keys.shape[0], keys.shape[-1]
        if self.chunk_ids is None:  # one segment: a view of its cache, no copy
            first = self.chunk_offset * c
            return keys[:, first : first + self.chunks * c].view(kv, self.chunks, c, d)
        return keys.view(kv, keys.shape[1] // c, c, d).index_select(1, self.chunk_ids)

    def per_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """[kv, segments, ...] -> [kv, chunks, ...]: each chunk gets its segment's entry."""
        if self.chunk_segment is None:
            return x.expand(x.shape[0], self.chunks, *x.shape[2:])
        return x.index_select(1, self.chunk_segment)

    def to_grid(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """[kv, chunks, ...] -> [kv, segments, chunks_max, ...], missing chunks filled with `fill`."""
        segments = self.padding.segments
        if self.chunk_cell is None:
            return x.unsqueeze(1)
        grid = x.new_full((x.shape[0], segments * self.chunks_max, *x.shape[2:]), fill)
        grid.index_copy_(1, self.chunk_cell, x)
        return grid.view(x.shape[0], segments, self.chunks_max, *x.shape[2:])


def _rows_matmul(a: torch.Tensor, b: torch.Tensor, min_rows: int) -> torch.Tensor:
    """a @ b with a's row dimension (-2) padded to at least `min_rows` rows: the products of
    this module then all run a kernel path the kernel table's probe found row-invariant."""
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
    keys are laid out by logical position: its segment's context in whole chunks of
    ATTENTION_CHUNK on a grid from position 0 (every chunk of every segment in one batched
    product, no padding), then a per-row tail gathered from the context's end and the row's
    ancestors. Scores and chunk outputs are products in the model's dtype, padded to the row
    count with which the kernel table's probe passed (`min_rows`, the plan's `attention_rows`);
    each chunk is reduced alone and a row's
    chunks are summed in order (a shorter segment's missing chunks add exact zeros). So plain
    decoding (one segment, n = 1, paths [[0]]) computes exactly what a tree row, alone or
    batched with other requests, computes.
    """
    heads, n, d = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    c, tail, pad = ATTENTION_CHUNK, layout.tail, layout.padding
    segments, rows = pad.segments, pad.rows_max
    scale = d**-0.5
    tail_keys = keys.index_select(1, layout.tail_slots).view(kv_heads, n, tail, d)
    tail_values = values.index_select(1, layout.tail_slots).view(kv_heads, n, tail // c, c, d)
    qg = q.view(kv_heads, group, n, d).transpose(1, 2)  # [kv, n, g, d]
    tail_scores = _rows_matmul(qg, tail_keys.transpose(-1, -2), min_rows).float() + layout.tail_bias  # [kv, n, g, T]
    row_max = tail_scores.amax(-1)  # [kv, n, g]
    if layout.chunks:
        q_chunks = layout.per_chunk(pad.to_padded(qg).reshape(kv_heads, segments, rows * group, d))
        scores = _rows_matmul(q_chunks, layout.shared_chunks(keys).transpose(-1, -2), min_rows).float()  # [kv, C, M, c]
        shared_max = layout.to_grid(scores.amax(-1), float("-inf")).amax(2)  # [kv, segments, M]
        row_max = torch.maximum(row_max, pad.from_padded(shared_max.view(kv_heads, segments, rows, group)))
        m = layout.per_chunk(pad.to_padded(row_max).reshape(kv_heads, segments, rows * group))  # [kv, C, M]
        weights = torch.exp((scores - m[..., None]) * scale)
        sums = layout.to_grid(weights.sum(-1), 0.0).view(kv_heads, segments, -1, rows, group)  # [kv, B, Cmax, r, g]
        outs = _rows_matmul(weights.to(q.dtype), layout.shared_chunks(values), min_rows).float()  # [kv, C, M, d]
        outs = layout.to_grid(outs, 0.0).view(kv_heads, segments, -1, rows, group, d)
        shared_sums = pad.from_padded(sums.permute(0, 1, 3, 4, 2))  # [kv, n, g, Cmax]
        shared_parts = pad.from_padded(outs.permute(0, 1, 3, 4, 2, 5))  # [kv, n, g, Cmax, d]
    tail_weights = torch.exp((tail_scores - row_max[..., None]) * scale)  # [kv, n, g, T]
    tail_sums = tail_weights.view(kv_heads, n, group, tail // c, c).sum(-1)  # [kv, n, g, T chunks]
    p_tail = tail_weights.to(q.dtype).view(kv_heads, n, group, tail // c, c).transpose(2, 3)
    parts = _rows_matmul(p_tail, tail_values, min_rows).float().transpose(2, 3)  # [kv, n, g, T chunks, d]
    if layout.chunks:
        tail_sums = torch.cat([shared_sums, tail_sums], dim=-1)
        parts = torch.cat([shared_parts, parts], dim=3)
    norm = tail_sums.cumsum(-1)[..., -1:]  # chunks summed in order: [kv, n, g, 1]
    out = parts.cumsum(3)[..., -1, :] / norm  # [kv, n, g, d]
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


# (kv heads, query heads per kv head, head dim) the kernel table probes: smollm2's, the 1.5B's,
# and the groups of 1 and 2 whose few rows per batched product fp32 rounds apart on the AMX Xeon
PROBE_SHAPES = ((3, 3, 64), (2, 6, 128), (2, 1, 128), (2, 2, 64))


def attention_is_layout_invariant(dtype: torch.dtype, min_rows: int, kv_heads: int = 2, group: int = 3,
                                  d: int = 64) -> bool:  # fmt: skip
    """Whether `layout_invariant_attention` gives each row of a branching tree, alone and batched
    with two other requests, exactly what plain decoding of that row's token gives, on this machine,
    in `dtype`, for heads of this shape (the kernel table probes `PROBE_SHAPES`; a model at load
    its own: a lone query row per kv head, group 1, is the case a kernel may treat apart).

    The tree has a chain with a sibling at every depth, starting after 58 context positions so
    that the chain crosses a chunk boundary (64) and both the shared and the per-row paths run.
    The batch puts two more requests beside it: 100 context positions and 3 rows, and a
    71-deep chain after 30 positions, which widens every row's tail to 128 columns. One call
    runs first and is not compared: on the AMX Xeon the first call of these kernels in a
    process could round differently from every later one (`Transformer` warms up the same way).
    """
    gen = torch.Generator().manual_seed(0)
    start, depth, other_start, deep_start = 58, 10, 100, 30
    tree, chain = DraftTree(), [0]  # chain: verify rows of the root and the chain nodes
    for _ in range(depth - 1):
        tree.add(1, chain[-1] - 1)  # a sibling, then the chain node (draft node i is verify row i + 1)
        chain.append(tree.add(2, chain[-1] - 1) + 1)
    paths = verify_paths(tree)
    deep_chain = DraftTree([7] * 70, list(range(-1, 69)), [0.0] * 70)
    others = [verify_paths(DraftTree([5, 6], [-1, 0], [0.0, 0.0])), verify_paths(deep_chain)]
    n = len(tree) + 1
    capacity = 128  # cache offsets in a pool are multiples of the chunk
    keys = torch.randn(kv_heads, 3 * capacity, d, generator=gen).to(dtype)  # a pool of three caches
    values = torch.randn(kv_heads, 3 * capacity, d, generator=gen).to(dtype)
    q = torch.randn(kv_heads * group, n + sum(len(p) for p in others), d, generator=gen).to(dtype)
    tree_layout = BatchLayout.build([start], [0], [paths])
    layout_invariant_attention(q[:, :n], keys, values, tree_layout, min_rows)  # the warm-up
    alone_tree = layout_invariant_attention(q[:, :n], keys, values, tree_layout, min_rows)
    batch = BatchLayout.build([start, other_start, deep_start], [0, capacity, 2 * capacity], [paths, *others])
    batched = layout_invariant_attention(q, keys, values, batch, min_rows)
    for t, row in enumerate(chain):
        slots = torch.cat([torch.arange(start), start + torch.tensor(chain[: t + 1])])
        one = BatchLayout.build([start + t], [0], [torch.tensor([[0]])])
        alone = layout_invariant_attention(q[:, row : row + 1], keys[:, slots], values[:, slots], one, min_rows)
        if not (torch.equal(alone[:, 0], alone_tree[:, row]) and torch.equal(alone[:, 0], batched[:, row])):
            return False
    return True
