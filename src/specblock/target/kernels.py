"""Matrix products routed to what this machine does fastest, chosen once per machine.

Decoding multiplies a few rows (one token, or a draft tree of n nodes) by large weights, and
which kernel wins depends on the CPU, which varies between this project's machines:
- AMD EPYC with AVX2 only: fp32 through NumPy's OpenBLAS reads weights at the memory's limit
  where PyTorch's `F.linear` reaches half of it; bf16 products cost more per row.
- AMD EPYC (Zen 5) with AVX512-BF16, no AMX: bf16 `F.linear` over 2-64 rows costs about what
  one row does, but a single row takes a slower path (and rounds differently).
- Intel Xeon with AMX: bf16 over 16-64 rows costs about one row.

So at first use on a machine `measure_kernel_table` times the candidates on a few weight
shapes and checks which row counts give bit-identical rows (batch invariance: a token's
products must not depend on how many other rows share the call). The table is cached under
the cache root, keyed by CPU (`CpuFeatures.key`: model, instruction sets, generation), thread
count and torch version; `specblock profile` measures it again. A `Linear` then never
converts weights per call: weights are stored once, in the layout and dtype of the chosen
kernel.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from specblock.errors import InvalidSettingError
from specblock.target.cpu import auto_dtype, compute_threads, cpu_features
from specblock.target.attention import PROBE_SHAPES, attention_is_layout_invariant

PAD_CANDIDATES = (1, 2, 4, 8, 16)  # pad fewer rows than this up to it (half precision, CPU; fp32: `_candidates`)
ATTENTION_PAD_CANDIDATES = (8, 16)  # the verify attention's padding where its products' plain rows fail the probe
# fixed call size of chunked candidates: about one row's cost with AMX (benchmarks/fixed_chunk_invariance.py)
CHUNK_ROWS = 16
PACK_ROWS_HINT = 16  # the row count oneDNN's packed layout is tuned for (trees; one row costs about the same)
_SHAPES = ((1536, 576), (576, 1536), (8192, 576), (2048, 1536))  # (out, in) of typical products
_CHECK_ROWS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 160, 320)  # call sizes the 32 checked rows are compared in
CHECKED_CALL_ROWS = max(_CHECK_ROWS)  # a server batch verifying more rows than this is exact only unchecked


@dataclass
class KernelPlan:
    """How products run for one (device, dtype): `backend` 'torch' (F.linear), 'onednn' (oneDNN
    on a weight packed once into its blocked layout), 'numpy' (OpenBLAS on a transposed copy,
    fp32 only) or 'int8' (weights quantized once per output channel, PyTorch's weight-only int8
    kernel; the dtype 'int8' names the weights, activations are `int8_activation_dtype`).
    Inputs with fewer than `min_rows` rows are padded up to it. With `chunk_rows` > 0, exact
    calls (`Linear(x, exact=True)`: a verify or decoding forward) are cut into calls of exactly
    that many rows, the last one padded: on CPUs where no call size keeps rows bit-identical
    (the AMX Xeon), one fixed size does, at about the cost of a plain call of that size.
    `invariant` says whether rows of exact calls came out bit-identical for every row count on
    this machine (and the verify attention passed its probe in this dtype): the condition for
    exact speculative decoding, fp32 as much as bf16. `attention_rows`: the row count the verify
    attention's products are padded to, the fewest for which its probe passed (more than
    `min_rows` where batched products of a few rows take other paths: fp32 on the AMX Xeon)."""

    device: str
    dtype: str
    backend: str = "torch"
    min_rows: int = 1
    chunk_rows: int = 0
    invariant: bool = True
    timings_us: dict = field(default_factory=dict)
    attention_rows: int = 1

    def describe(self) -> str:
        """The choice in words (without timings): printed, and recorded beside every measurement
        that depends on it (verify profiles, benchmark settings)."""
        if self.device != "cpu":
            return f"{self.device} {self.dtype}: F.linear (no kernel table off the CPU)"
        chunks = f", exact calls in chunks of {self.chunk_rows} rows" if self.chunk_rows else ""
        padded = self.invariant and self.attention_rows > self.min_rows  # (else verification attends through SDPA)
        attention = f", attention rows padded to {self.attention_rows}" if padded else ""
        verdict = "row-invariant" if self.invariant else "not row-invariant"
        return f"{self.dtype}: {self.backend}, rows padded to {self.min_rows}{chunks}{attention}, {verdict}"


def median_us(fn, repeats: int = 15) -> float:
    """Median microseconds of `fn()` over `repeats` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * sorted(times)[len(times) // 2]


def _rows_invariant(product, weight: torch.Tensor) -> bool:
    """True if each row comes out bit for bit the same alone as inside any larger call: checked
    for 32 different rows, so that a rounding difference, rare per element, shows."""
    x = torch.randn(max(_CHECK_ROWS), weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    full = {m: product(x[:m]) for m in _CHECK_ROWS}
    for i in range(32):
        alone = product(x[i : i + 1])[0]
        if any(not torch.equal(y[i], alone) for m, y in full.items() if i < m):
            return False
    return True


def int8_activation_dtype() -> torch.dtype:
    """Activations of an int8-weight CPU target: the CPU's `auto` dtype (bf16 with native bf16)."""
    return auto_dtype("cpu")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight ~ q * scale[:, None], q in [-127, 127]."""
    w = weight.float()
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


Candidate = tuple[str, int, int]  # (backend, min_rows, chunk_rows)


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """Environment variable `name`, one of `choices` (the first when unset)."""
    value = os.environ.get(name, choices[0]).strip().lower()
    if value not in choices:
        raise InvalidSettingError(f"{name}={value!r}: use {' or '.join(choices)}")
    return value


def chunks_allowed() -> bool:
    """False when SPECBLOCK_KERNEL_CHUNKS=off: plain calls only, faster where chunks would be
    chosen (bf16 on the AMX Xeon: about 15% on the 1.5B), but not exact there; also how a
    report begun with plain calls is resumed on them."""
    return _env_choice("SPECBLOCK_KERNEL_CHUNKS", ("on", "off")) == "on"


def exact_kernels_wanted() -> bool:
    """False when SPECBLOCK_KERNELS=fastest: each dtype takes its fastest candidate whether or
    not its rows are invariant, for users who trade exactness (speculative output equal to
    plain decoding only up to near-ties) for speed where it costs (fp32 on the AMX Xeon:
    0.76x plain decoding on smollm2-135m)."""
    return _env_choice("SPECBLOCK_KERNELS", ("exact", "fastest")) == "exact"


def _candidates(dtype: torch.dtype) -> list[Candidate]:
    """The kernels worth timing for a CPU dtype (int8: the weights' dtype).

    Padding matters for invariance as much as for speed: on the AMX Xeon fp32 oneDNN rounds a
    lone row (its matrix-vector path) differently from every call of 2 to 320 rows, so padding
    one row to two makes it row-invariant at about 1.1x a row's cost (benchmarks/results/
    fp32_call_sizes_xeon_spr/probe.md)."""
    if dtype == torch.int8:
        return [("int8", 1, 0), ("int8", 2, 0)]
    if dtype == torch.float32:
        padded = [("torch", r, 0) for r in (1, 2, 16)] + [(b, r, 0) for b in ("numpy", "onednn") for r in (1, 2)]
        chunked = [(backend, 1, CHUNK_ROWS) for backend in ("torch", "onednn", "numpy")]
    else:
        padded = [("torch", r, 0) for r in PAD_CANDIDATES] + [("onednn", r, 0) for r in (1, 2, 16)]
        chunked = [(backend, 1, CHUNK_ROWS) for backend in ("torch", "onednn")]
    return padded + (chunked if chunks_allowed() else [])


def timing_name(candidate: Candidate) -> str:
    """A candidate's name in `KernelPlan.timings_us`: 'onednn_rows1', 'torch_rows1_chunks16'."""
    backend, rows, chunk = candidate
    return f"{backend}_rows{rows}" + (f"_chunks{chunk}" if chunk else "")


TABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)  # int8: the weights' dtype


def measure_kernel_table(dtypes=TABLE_DTYPES) -> dict[str, KernelPlan]:
    """Time the candidate kernels of each CPU dtype on this machine and pick one each (a few seconds).

    Each candidate is timed through `Linear` itself, in exact calls, at one row and at 16 rows
    (decoding and a tree) on four weight shapes, and checked for row invariance. Each dtype
    takes the fastest row-invariant candidate (exact speculative decoding needs it), preferring
    plain calls to fixed chunks, then the fewest padded rows, among those within 10% of it; the
    fastest of all where none is invariant or SPECBLOCK_KERNELS=fastest. The verify attention's
    probe then runs in that dtype too.
    """
    weights32 = [torch.randn(o, i, generator=torch.Generator().manual_seed(o + i)) / i**0.5 for o, i in _SHAPES]
    plans: dict[str, KernelPlan] = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        activation = int8_activation_dtype() if dtype == torch.int8 else dtype  # int8 plans quantize these
        weights = [w.to(activation) for w in weights32]
        cost: dict[Candidate, float] = {}
        invariant: dict[Candidate, bool] = {}
        for candidate in _candidates(dtype):
            try:
                products = [Linear(w, plan=KernelPlan("cpu", name, *candidate)) for w in weights]
                total = 0.0
                for lin, w in zip(products, weights):
                    for m in (1, 16):
                        x = torch.randn(m, w.shape[1]).to(activation)
                        total += median_us(lambda: lin(x, exact=True))
                exact_calls = [lambda x, lin=lin: lin(x, exact=True) for lin in products]
                invariant[candidate] = all(_rows_invariant(call, w) for call, w in zip(exact_calls, weights))
                cost[candidate] = total
            except (RuntimeError, NotImplementedError, AttributeError):  # a kernel this torch build or CPU lacks
                continue
        if not cost:
            plans[name] = KernelPlan("cpu", name, "torch", 1, 0, False)
            continue
        ok = [c for c in cost if invariant[c]] if exact_kernels_wanted() else []
        ok = ok or list(cost)
        best = min(cost[c] for c in ok)
        # within 10% of the fastest: plain calls, then the fewest padded rows (less work where a row costs)
        backend, rows, chunk = min(ok, key=lambda c: (cost[c] > 1.1 * best, c[2], c[1], cost[c]))
        plan = KernelPlan("cpu", name, backend, rows, chunk, invariant[(backend, rows, chunk)],
                          {timing_name(c): round(t, 1) for c, t in cost.items()}, rows)  # fmt: skip
        if dtype != torch.int8 and plan.invariant:  # (int8 models attend with their activations' plan)
            found = invariant_attention_rows(dtype, rows)
            plan.invariant, plan.attention_rows = found > 0, found or rows
        plans[name] = plan
    return plans


def invariant_attention_rows(dtype: torch.dtype, min_rows: int) -> int:
    """The fewest rows, from `min_rows` up, that the verify attention's products must be padded
    to for its probe to pass on every head shape in `PROBE_SHAPES`; 0 if none does. On the AMX
    Xeon fp32 batched products of fewer than 8 rows round differently from larger ones for
    some head shapes (a query group of 1 or 2, head dim 128), and 8 or more pass; bf16 passes
    unpadded."""
    for rows in sorted({min_rows, *(r for r in ATTENTION_PAD_CANDIDATES if r > min_rows)}):
        if all(attention_is_layout_invariant(dtype, rows, *shape) for shape in PROBE_SHAPES):
            return rows
    return 0


TABLE_FORMAT = 8  # bump when KernelPlan or the candidates change: older tables are measured again


def _table_key() -> str:
    chunks = "" if chunks_allowed() else " | no chunks"
    fastest = "" if exact_kernels_wanted() else " | fastest"
    return (f"format {TABLE_FORMAT} | {cpu_features().key()} | {compute_threads()} threads | torch {torch.__version__}"
            f"{chunks}{fastest}")


def table_path() -> Path:
    from specblock.models.fetch import cache_root

    return cache_root() / "profiles" / "kernels.json"


_TABLE: dict[str, KernelPlan] | None = None


def kernel_table(refresh: bool = False) -> dict[str, KernelPlan]:
    """This machine's CPU kernel table: cached on disk, measured when missing or stale."""
    global _TABLE
    if _TABLE is not None and not refresh:
        return _TABLE
    path, key = table_path(), _table_key()
    tables = _read_tables(path)
    if key in tables and not refresh:
        try:
            _TABLE = {name: KernelPlan(**plan) for name, plan in tables[key].items()}
            if all(str(d).removeprefix("torch.") in _TABLE for d in TABLE_DTYPES):
                return _TABLE
        except TypeError:  # written by another version: measure again
            pass
    torch.set_num_threads(compute_threads())  # measure with the pool the engine will use
    _TABLE = measure_kernel_table()
    tables[key] = {n: asdict(p) for n, p in _TABLE.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes started together (torchrun) each write their own
    tmp.write_text(json.dumps({"tables": tables}, indent=2))
    os.replace(tmp, path)
    return _TABLE


def _read_tables(path: Path) -> dict[str, dict]:
    """Every machine key's table in the cache file; a missing, corrupt or old-format file is empty."""
    try:
        tables = json.loads(path.read_text()).get("tables", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return tables if isinstance(tables, dict) else {}


def kernel_plan(device: str | torch.device, dtype: torch.dtype) -> KernelPlan:
    """The plan for products on `device` in `dtype` (GPUs: F.linear, no padding)."""
    device = torch.device(device)
    name = str(dtype).removeprefix("torch.")
    if device.type != "cpu":
        return KernelPlan(str(device), name)
    return kernel_table()[name]


_THREADS_SET = False


def configure_threads(plan: KernelPlan) -> None:
    """Set PyTorch's thread pool once per process, at the first model load: every core, or one
    thread when fp32 products run in OpenBLAS, whose own threads then have the cores."""
    global _THREADS_SET
    if _THREADS_SET or plan.device != "cpu":
        return
    torch.set_num_threads(1 if plan.backend == "numpy" else compute_threads())  # the table measured at this count
    _THREADS_SET = True


class Linear:
    """y = x W^T + b for x of shape [M, in], through the plan's kernel; the weight is stored
    once in that kernel's layout (a transposed array for NumPy)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, plan: KernelPlan | None = None) -> None:
        plan = plan or kernel_plan(weight.device, weight.dtype)
        self.bias = bias
        self.min_rows = plan.min_rows
        self.chunk_rows = plan.chunk_rows
        on_cpu = weight.device.type == "cpu"
        self.uses_numpy = plan.backend == "numpy" and weight.dtype == torch.float32 and on_cpu
        self.packed = plan.backend == "onednn" and on_cpu
        self.int8 = plan.backend == "int8"
        self.out_features, self.in_features = weight.shape
        self.weight = self._weight_t = None
        if self.int8:  # PyTorch's weight-only int8 kernel: int8 weights, scales in the activations' dtype
            self.weight, scale = quantize_int8(weight)
            self.scale = scale.to(weight.dtype)
        elif self.uses_numpy:
            self._weight_t = weight.t().contiguous().numpy()  # [in, out]
        elif self.packed:  # oneDNN's own blocked layout, made once (what inductor's freezing does)
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS_HINT)
        else:
            self.weight = weight.contiguous()  # [out, in]

    def __call__(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """x of shape [..., in] -> [..., out]; leading dimensions are flattened into rows.

        `exact`: each row must come out as it would alone (a verify or decoding forward of a
        batch-invariant model); a chunked plan then runs it in fixed-size calls. Prefills and
        drafters leave it off and take the plain, faster call."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        rows = x.shape[0]
        if exact and self.chunk_rows:
            y = self._fixed_chunks(x)
        elif rows < self.min_rows:
            padded = x.new_zeros(self.min_rows, x.shape[1])
            padded[:rows] = x
            y = self._product(padded)[:rows]
        else:
            y = self._product(x)
        return y.reshape(*lead, self.out_features)

    def _fixed_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """The product in calls of exactly `chunk_rows` rows, the last one padded with zeros."""
        rows, c = x.shape[0], self.chunk_rows
        padded = x
        if rows % c or not rows:
            padded = x.new_zeros(max(1, -(-rows // c)) * c, x.shape[1])
            padded[:rows] = x
        return torch.cat([self._product(padded[i : i + c]) for i in range(0, padded.shape[0], c)])[:rows]

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_numpy:
            y = torch.from_numpy(np.matmul(x.contiguous().numpy(), self._weight_t))
            return y if self.bias is None else y + self.bias
        if self.int8:
            y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.weight, self.scale)
            return y if self.bias is None else y + self.bias
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
