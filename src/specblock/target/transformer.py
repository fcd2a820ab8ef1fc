"""A lean decoder (Llama / Qwen2 / Qwen3) with tree attention and feature capture.

Written for speed at small batches in plain PyTorch: q/k/v and gate/up projections are
fused into one matrix each, rotary tables are precomputed, every product runs through the
kernel this machine does fastest (`kernels.py`), and every forward writes its keys/values
straight into a pre-allocated `KVCache`. The math is `primitives.py`'s, which follows the
Hugging Face reference (RMSNorm in float32, rotate-half RoPE), so logits agree with it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from specblock.errors import UnsupportedModelError
from specblock.target.config import ModelConfig, rope_inverse_frequencies
from specblock.target.kernels import KernelPlan, Linear, configure_threads, int8_activation_dtype, kernel_plan
from specblock.target.kv_cache import KVCache, KVPool
from specblock.target.attention import (
    ATTENTION_CHUNK,
    BatchLayout,
    PaddedBatch,
    attention_is_layout_invariant,
    layout_invariant_attention,
    padded_attention,
)
from specblock.target.primitives import RotaryTable, apply_rope, attend, gated_mlp, rms_norm


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


@dataclass
class Segment:
    """One request's rows in a forward: `tokens` [n] at `positions` [n], whose keys/values go
    to `cache` slots [start, start + n); `attn_mask`, `paths`, `max_position` as in `forward`."""

    tokens: torch.Tensor
    positions: torch.Tensor
    cache: KVCache
    start: int
    attn_mask: torch.Tensor | None = None
    paths: torch.Tensor | None = None
    max_position: int | None = None


@dataclass
class ForwardOutput:
    hidden: torch.Tensor  # [n, H] final-normed hidden states (input of the lm_head)
    features: torch.Tensor | None  # [n, 3H] captured hidden states (design §3), or None
    exact: bool = False  # every row is what a forward of its request alone gives (pass it on to `logits`)


class Transformer:
    """Weights plus a forward pass over n new tokens that extends a KV cache."""

    def __init__(
        self, cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: str,
        plan: KernelPlan | None = None,
    ) -> None:  # fmt: skip
        """`dtype` torch.int8 means int8 weights (per-channel, quantized here) with activations
        in `int8_activation_dtype`, in which `weights` must then be given. `plan` overrides the
        kernel table's choice (benchmarks compare kernels with it)."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.int8_weights = dtype == torch.int8
        if self.int8_weights and self.device.type != "cpu":
            raise UnsupportedModelError("int8 weights run on the CPU only (PyTorch's weight-only int8 CPU kernel)")
        self.dtype = int8_activation_dtype() if self.int8_weights else dtype  # the compute dtype
        self.plan: KernelPlan = plan or kernel_plan(self.device, dtype)
        configure_threads(self.plan)
        if self.plan.backend == "numpy" and torch.get_num_threads() > 1:
            # the pool was set for another model first: OpenBLAS threads beside PyTorch's
            # spinning ones would starve each other, so products stay in PyTorch, whose rows
            # were not checked for invariance with this plan's padding
            if self.plan.invariant:
                warnings.warn("fp32 products run in PyTorch, not the OpenBLAS kernel the kernel table chose, because "
                              "a model loaded earlier in this process set PyTorch's thread pool: speculative output "
                              "is then exact only up to near-ties", RuntimeWarning, stacklevel=2)  # fmt: skip
            self.plan = replace(self.plan, backend="torch", invariant=False)
        self.embed = weights["model.embed_tokens.weight"]
        self.final_norm = weights["model.norm.weight"]
        if "lm_head.weight" not in weights and not cfg.tie_word_embeddings:
            raise UnsupportedModelError("checkpoint has no lm_head.weight and does not tie embeddings")
        self.lm_head = self._linear(self.embed if cfg.tie_word_embeddings else weights["lm_head.weight"])
        self.layers = [self._layer(weights, i) for i in range(cfg.num_layers)]
        self._capture_after = [idx - 1 for idx in cfg.feature_layers]  # may repeat or reorder in tiny models
        self.rotary = RotaryTable(rope_inverse_frequencies(cfg), self.dtype, self.device)
        # a CPU whose products are row-invariant in this dtype: verify forwards use the
        # layout-invariant attention, so speculative decoding equals plain decoding bit for bit
        # (bf16 as much as fp32, whose rows would otherwise differ in the last bits and flip
        # near-ties). The attention's products run in the compute dtype: their plan sets its padding
        self.attention_plan = kernel_plan(self.device, self.dtype) if self.int8_weights else self.plan
        self.batch_invariant = self.device.type == "cpu" and self.plan.invariant and self.attention_plan.invariant
        if self.batch_invariant:
            self.batch_invariant = self._warm_up_exact_kernels()

    def _warm_up_exact_kernels(self) -> bool:
        """Run every product once in an exact call and the verify attention's probe once, and
        return the probe's verdict. On the AMX Xeon the first call of the attention's kernels
        in a process could round differently from every later one (its probe failed now and
        then on a process's first call, never on a second: benchmarks/attention_probe_repeat.py),
        so no request may be the first; and a process whose kernels still disagree after
        warming up does not claim exactness (a few hundred ms for a 1.5B model). The probe
        runs with this model's head shape, which the table's probes may not have covered."""
        for lw in self.layers:
            for lin in (lw.qkv, lw.o_proj, lw.gate_up, lw.down):
                lin(torch.zeros(1, lin.in_features, dtype=self.dtype, device=self.device), exact=True)
        self.lm_head(torch.zeros(1, self.cfg.hidden_size, dtype=self.dtype, device=self.device), exact=True)
        cfg = self.cfg
        heads = (cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)  # this model's, not the table's
        return attention_is_layout_invariant(self.dtype, self.attention_plan.attention_rows, *heads)

    @property
    def weights_key(self) -> str:
        """The dtype that names this model's speed profile: 'int8' or the compute dtype."""
        return "int8" if self.int8_weights else str(self.dtype).removeprefix("torch.")

    @property
    def kernels(self) -> str:
        """The kernel choice its timings depend on (`KernelPlan.describe`; with int8 weights
        also the attention's): verify profiles are filed under it."""
        own = self.plan.describe()
        return own if self.attention_plan is self.plan else f"{own}; attention {self.attention_plan.describe()}"

    @property
    def dtype_name(self) -> str:
        """What the output reports: 'bfloat16', or 'int8 weights, bfloat16 activations'."""
        name = str(self.dtype).removeprefix("torch.")
        return f"int8 weights, {name} activations" if self.int8_weights else name

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
        return Linear(weight, bias, self.plan)

    def _layer(self, w: dict[str, torch.Tensor], i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        a = p + "self_attn."
        qkv = torch.cat([w[a + "q_proj.weight"], w[a + "k_proj.weight"], w[a + "v_proj.weight"]])
        bias = None
        if self.cfg.attention_bias:
            bias = torch.cat([w[a + "q_proj.bias"], w[a + "k_proj.bias"], w[a + "v_proj.bias"]])
        gate_up = torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
        return LayerWeights(
            input_norm=w[p + "input_layernorm.weight"],
            qkv=self._linear(qkv, bias),
            q_norm=w.get(a + "q_norm.weight"),
            k_norm=w.get(a + "k_norm.weight"),
            o_proj=self._linear(w[a + "o_proj.weight"]),
            post_norm=w[p + "post_attention_layernorm.weight"],
            gate_up=self._linear(gate_up),
            down=self._linear(w[p + "mlp.down_proj.weight"]),
        )

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> "Transformer":
        cfg = ModelConfig.from_dir(model_dir)
        weights = load_safetensors_dir(Path(model_dir), int8_activation_dtype() if dtype == torch.int8 else dtype, device)
        missing = _missing_weights(cfg, weights)
        if missing:
            raise UnsupportedModelError(f"{model_dir}: checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
        return cls(cfg, weights, dtype, device)

    def new_cache(self, capacity: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_layers, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device)

    def new_cache_pool(self, count: int, capacity: int) -> list[KVCache]:
        """`count` caches side by side in one pool: a batch's forward gathers all their keys at once."""
        c = self.cfg
        return KVPool(count, c.num_layers, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device).caches

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        start: int,
        attn_mask: torch.Tensor | None = None,
        capture: bool = False,
        max_position: int | None = None,
        paths: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """Run n tokens of one request whose keys/values go to cache slots [start, start+n).

        `attn_mask` ([n, start+n] bool, True = may attend) is needed for a tree; without it
        the n tokens attend causally to each other and fully to slots [0, start).
        `max_position` (the largest of `positions`, when the caller knows it) spares a sync.
        `paths` ([n, D], each row's ancestors by depth: `tree.verify_paths`) marks a verify
        forward; a batch-invariant model then attends with `layout_invariant_attention`.
        """
        segment = Segment(tokens, positions, cache, start, attn_mask, paths, max_position)
        return self.forward_segments([segment], capture)

    @torch.inference_mode()
    def forward_segments(self, segments: list["Segment"], capture: bool = False) -> ForwardOutput:
        """One forward over the rows of several requests (continuous batching), in order.

        Every matrix product takes all rows at once; each segment attends against its own
        cache, exactly as it would alone. On a batch-invariant model (row-invariant products,
        layout-invariant attention) a request's rows therefore come out bit for bit what a
        forward of that request alone gives. The output's rows follow the segments' order.
        """
        c = self.cfg
        sizes = [s.tokens.shape[0] for s in segments]
        n = sum(sizes)
        tokens = segments[0].tokens if len(segments) == 1 else torch.cat([s.tokens for s in segments])
        positions = segments[0].positions if len(segments) == 1 else torch.cat([s.positions for s in segments])
        known = [s.max_position for s in segments]
        cos, sin = self.rotary.lookup(positions, None if None in known else max(known))
        cos, sin = cos[None], sin[None]  # broadcast over heads: [1, n, d]
        q_size = c.num_heads * c.head_dim
        kv_size = c.num_kv_heads * c.head_dim
        attention = SegmentAttention(self, segments)
        exact = attention.invariant  # a verify forward of a batch-invariant model: products in exact calls
        x = F.embedding(tokens, self.embed)
        captured: dict[int, torch.Tensor] = {-1: x}  # HF hidden-state index 0 = embedding output
        for i, lw in enumerate(self.layers):
            h = rms_norm(x, lw.input_norm, c.rms_norm_eps)
            qkv = lw.qkv(h, exact)
            q = qkv[:, :q_size].view(n, c.num_heads, c.head_dim).transpose(0, 1)
            k = qkv[:, q_size : q_size + kv_size].view(n, c.num_kv_heads, c.head_dim).transpose(0, 1)
            v = qkv[:, q_size + kv_size :].view(n, c.num_kv_heads, c.head_dim).transpose(0, 1)
            if lw.q_norm is not None:
                q = rms_norm(q, lw.q_norm, c.rms_norm_eps)
                k = rms_norm(k, lw.k_norm, c.rms_norm_eps)
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
            attn = attention(i, q, k, v)  # [heads, n, d]
            x = x + lw.o_proj(attn.transpose(0, 1).reshape(n, q_size), exact)
            x = x + gated_mlp(rms_norm(x, lw.post_norm, c.rms_norm_eps), lw.gate_up, lw.down, exact)
            if capture and i in self._capture_after:
                captured[i] = x
        hidden = rms_norm(x, self.final_norm, c.rms_norm_eps)
        features = torch.cat([captured[i] for i in self._capture_after], dim=-1) if capture else None
        return ForwardOutput(hidden=hidden, features=features, exact=exact)

    def logits(self, hidden: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Float32 logits over the full vocabulary for final-normed hidden states (`exact`: rows
        of an exact forward, `ForwardOutput.exact`, keep their bits in any batch)."""
        with torch.inference_mode():
            rows = hidden if hidden.dim() == 2 else hidden[None]
            return self.lm_head(rows, exact).float().reshape(*hidden.shape[:-1], -1)


BATCHED_GRID_BYTES = 8 << 20  # measured on the Zen 5: 8 requests x 9 rows x 2000-token contexts is past it


class SegmentAttention:
    """Writes a forward's keys/values to each segment's cache and attends, per layer.

    Segments whose caches share one pool (the server's batch) are written with one index and
    attend in one call; otherwise (a lone request) each segment runs on its own. Verify
    forwards (segments with `paths`) of a batch-invariant model use the layout-invariant
    attention, whose rows do not depend on the batch; the rest use scaled-dot-product attention.
    """

    def __init__(self, model: "Transformer", segments: list[Segment]) -> None:
        self.segments = segments
        self.min_rows = model.attention_plan.attention_rows
        device = model.device
        sizes = [s.tokens.shape[0] for s in segments]
        starts = [s.start for s in segments]
        pool = segments[0].cache.pool
        self.pooled = len(segments) > 1 and all(s.cache.pool is pool for s in segments)
        self.invariant = model.batch_invariant and all(s.paths is not None for s in segments)
        if self.pooled and self.invariant:
            # one call keeps a partial output per row and per context chunk of the longest
            # context; past BATCHED_GRID_BYTES that stops fitting the caches and a call per
            # request is faster (benchmarks/batched_verify.py). Both give the same bits.
            chunks_max = max(s.start for s in segments) // ATTENTION_CHUNK
            grid = sum(sizes) * chunks_max * model.cfg.num_heads * model.cfg.head_dim * 4
            self.pooled = grid <= BATCHED_GRID_BYTES
        for s, size in zip(segments, sizes):
            s.cache.check_room(s.start, size)
        offsets = [s.cache.offset for s in segments]
        if self.pooled:
            self.pool = pool
            self.write_slots = torch.cat(
                [torch.arange(o + st, o + st + size, device=device) for o, st, size in zip(offsets, starts, sizes)]
            )
            if self.invariant:
                self.layout = BatchLayout.build(starts, offsets, [s.paths for s in segments])
            else:
                self.batch = PaddedBatch.build(starts, offsets, [s.attn_mask for s in segments], sizes, device)
        elif self.invariant:
            self.layouts = [BatchLayout.build([s.start], [s.cache.offset], [s.paths]) for s in segments]
        else:
            self.masks = []
            for s, size in zip(segments, sizes):
                mask = s.attn_mask
                if mask is None and size > 1:
                    mask = torch.ones(size, s.start + size, dtype=torch.bool, device=device).tril(diagonal=s.start)
                self.masks.append(None if mask is None else mask[None, None])
        self.sizes = sizes

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [heads, n, d], k/v [kv_heads, n, d] of every segment's rows -> attention [heads, n, d]."""
        if self.pooled:
            keys, values = self.pool.keys[layer], self.pool.values[layer]
            keys.index_copy_(1, self.write_slots, k)
            values.index_copy_(1, self.write_slots, v)
            if self.invariant:
                return layout_invariant_attention(q, keys, values, self.layout, self.min_rows)
            return padded_attention(q, keys, values, self.batch)
        outputs, offset = [], 0
        for b, (segment, size) in enumerate(zip(self.segments, self.sizes)):
            rows = slice(offset, offset + size)
            cache = segment.cache
            cache.write(layer, segment.start, k[:, rows], v[:, rows])
            if self.invariant:
                pool = cache.pool
                out = layout_invariant_attention(q[:, rows], pool.keys[layer], pool.values[layer], self.layouts[b], self.min_rows)
            else:
                keys, values = cache.view(layer, segment.start + size)
                out = attend(q[None, :, rows], keys, values, self.masks[b])[0]
            outputs.append(out)
            offset += size
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def _missing_weights(cfg: ModelConfig, w: dict[str, torch.Tensor]) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        if cfg.attention_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        if cfg.qk_norm:
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
    return [name for name in names if name not in w]


def load_safetensors_dir(model_dir: Path, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Read every `*.safetensors` file of a directory (sharded or not) into one dict."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{model_dir} holds no *.safetensors weights (pickled .bin files are not loaded)")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    weights[name] = f.get_tensor(name).to(device=device, dtype=dtype)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise UnsupportedModelError(f"cannot read {path}: {exc}") from None
    return weights
