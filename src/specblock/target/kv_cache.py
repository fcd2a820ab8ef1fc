"""A pre-allocated key/value cache per request that can drop rejected draft nodes.

Slots `[0, length)` hold the committed context. A tree verification writes its nodes'
keys/values at `[length, length + n)`; after acceptance `keep_path` gathers the accepted
nodes into contiguous slots and the rest is simply overwritten by the next forward.

Every cache is a region of a `KVPool`: a lone request's pool holds one cache; the server's
pool holds one per batch slot, side by side in one tensor, so that a forward over several
requests can gather all their keys with one index (`attention.BatchLayout`).
"""

from __future__ import annotations

import torch


POOL_ALIGN = 32  # = attention.ATTENTION_CHUNK


class KVPool:
    """`count` caches of `capacity` slots each in one [layers, kv_heads, count * capacity, d] tensor."""

    def __init__(
        self,
        count: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if count > 1:  # caches start on the attention's chunk grid (attention.BatchLayout reads whole chunks)
            capacity = -(-capacity // POOL_ALIGN) * POOL_ALIGN
        shape = (num_layers, num_kv_heads, count * capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.caches = [KVCache.in_pool(self, i) for i in range(count)]


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        """A cache of its own (a pool of one)."""
        self._attach(KVPool(1, num_layers, num_kv_heads, head_dim, capacity, dtype, device), 0)

    @classmethod
    def in_pool(cls, pool: KVPool, index: int) -> "KVCache":
        """Region `index` of `pool` (views: writes land in the pool's tensors)."""
        cache = cls.__new__(cls)
        cache._attach(pool, index)
        return cache

    def _attach(self, pool: KVPool, index: int) -> None:
        self.pool = pool
        self.offset = index * pool.capacity  # where slot 0 sits in the pool's slot dimension
        region = slice(self.offset, self.offset + pool.capacity)
        self.keys = pool.keys[:, :, region]
        self.values = pool.values[:, :, region]
        self.capacity = pool.capacity
        self.length = 0

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store keys/values of shape [kv_heads, n, head_dim] at slots [start, start + n)."""
        n = keys.shape[1]
        self.check_room(start, n)
        self.keys[layer, :, start : start + n] = keys
        self.values[layer, :, start : start + n] = values

    def check_room(self, start: int, n: int) -> None:
        """Raise if slots [start, start + n) do not fit (a pooled write would spill into the next cache)."""
        if start + n > self.capacity:
            raise RuntimeError(f"KV cache overflow: {start + n} slots needed, {self.capacity} allocated")

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots [0, end) as [1, kv_heads, end, head_dim] views."""
        return self.keys[layer, :, :end].unsqueeze(0), self.values[layer, :, :end].unsqueeze(0)

    def keep_path(self, start: int, node_slots: torch.Tensor | list[int]) -> None:
        """Keep the nodes at slots `start + node_slots` (in order) as slots `start, start+1, ...`.

        Node slots are offsets of the accepted path within the last verified block; the
        gather copies before writing, so overlapping source and destination are safe.
        """
        idx = torch.as_tensor(node_slots, dtype=torch.long, device=self.keys.device) + start
        m = idx.numel()
        is_identity = bool((idx == torch.arange(start, start + m, device=idx.device)).all())
        if not is_identity:
            self.keys[:, :, start : start + m] = self.keys.index_select(2, idx)
            self.values[:, :, start : start + m] = self.values.index_select(2, idx)
        self.length = start + m

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (a drafter rolling back its own cache)."""
        if length > self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
