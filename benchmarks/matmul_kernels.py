"""Bandwidth of candidate matrix-product kernels at decoding shapes (measured on the AVX2 EPYC for
the engine before issue 14; `target/kernels.py` now times its candidates on each machine).

    .venv/bin/python benchmarks/matmul_kernels.py

Multiplies M rows by 30 distinct SmolLM2 gate/up-sized weights (3072 x 576, 212 MB in fp32,
far larger than the caches) and reports GB/s of weights read, for M = 1..64.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks_common import machine_description


def bench(fn, reps: int = 8) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        weights = [torch.randn(3072, 576).to(dtype) for _ in range(30)]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        transposed_np = [w.t().contiguous().numpy() for w in weights] if dtype == torch.float32 else None
        for m in (1, 2, 4, 8, 16, 32, 64):
            x = torch.randn(m, 576).to(dtype)
            kernels = {
                "F.linear(x, W)": lambda: [F.linear(x, w) for w in weights],
                "torch.mm(W, x.T)": lambda: [torch.mm(w, x.t()) for w in weights],
            }
            if dtype == torch.float32:
                xn = x.numpy()
                kernels["numpy x @ W.T (OpenBLAS)"] = lambda: [np.matmul(xn, w) for w in transposed_np]
            else:
                kernels["F.linear fp32 up-cast"] = lambda: [F.linear(x.float(), w.float()) for w in weights]
            for name, fn in kernels.items():
                rows.append((str(dtype).replace("torch.", ""), m, name, nbytes / bench(fn) / 1e9))
    lines = [
        "# Matrix-product kernels at decoding shapes",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {machine_description()}",
        "- 30 distinct 3072x576 weights (out of cache); figure = GB/s of weights read (median of 8)",
        "",
        "| dtype | rows M | kernel | GB/s |",
        "|---|---|---|---|",
    ] + [f"| {d} | {m} | {k} | {g:.1f} |" for d, m, k, g in rows]
    out = Path(__file__).parent / "results" / "matmul_kernels.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
