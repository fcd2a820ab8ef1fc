"""This machine's memory read bandwidth and the one-token forward it bounds (issue 14's target
"T(0) within 1.3x of the memory-bandwidth bound"), next to the measured T(0).

A one-token forward must read every weight of the matrix products once (the embedding table
only for one row, unless it is the tied lm_head). Bandwidth is measured as the median
throughput of summing a buffer far larger than the caches, in the engine's thread count.
Not a test.

    python benchmarks/memory_bound.py --target qwen2.5-coder-1.5b --dtype bfloat16 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.api import SpecGenerator
from specblock.budget import measure_verify_latency
from specblock.target.runner import TargetRunner


def read_bandwidth_gbs(gib: float = 2.0, repeats: int = 7) -> float:
    """Median GB/s of reading a `gib` GiB buffer: a float32 sum, vectorised, which the memory
    bounds (an integer sum is slower than the memory here and would understate it)."""
    buf = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    buf.sum()  # touch every page first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / sorted(times)[repeats // 2] / 1e9


def product_bytes(model) -> int:
    """Bytes a one-token forward reads from the weights of its matrix products."""
    cfg = model.cfg
    h, inter, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 2 * h * inter + inter * h
    params = cfg.num_layers * per_layer + cfg.vocab_size * h  # + the lm_head
    bytes_per_param = 1 if model.int8_weights else torch.finfo(model.dtype).bits // 8
    return params * bytes_per_param


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    gen = SpecGenerator.load(args.target, "vanilla", dtype=args.dtype)
    bandwidth = read_bandwidth_gbs()
    weights = product_bytes(gen.target)
    bound_ms = 1000 * weights / (bandwidth * 1e9)
    latency = measure_verify_latency(TargetRunner(gen.target), sizes=(0, 1, 4, 8, 16, 32, 59, 64))
    record = {
        **run_header(), "target": args.target, "dtype": gen.target.dtype_name,
        "read_bandwidth_gbs": round(bandwidth, 1), "product_weight_bytes": weights,
        "bound_ms": round(bound_ms, 2), "verify_ms": {n: round(1000 * t, 2) for n, t in latency.items()},
        "t0_over_bound": round(1000 * latency[0] / bound_ms, 2),
        "t16_over_t0": round(latency[16] / latency[0], 3), "t59_over_t0": round(latency[59] / latency[0], 3),
    }  # fmt: skip
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"memory_bound_{args.target}_{gen.target.weights_key}.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
