"""Which fp32 call sizes give a row the same bits, and what padding or chunking costs.

The kernel table (`target/kernels.py`) keeps an fp32 candidate only if every row comes out bit
for bit the same alone and inside larger calls. This probe shows why a candidate passes or
fails on this machine: for each backend it groups the call sizes 1-128 into classes whose
common rows agree bit for bit (on the AMX Xeon oneDNN's lone row, its matrix-vector path, is a
class of its own and every larger call another), then checks the table's three ways of making
rows invariant (plain calls, a lone row padded to two, fixed 16-row chunks) and times each at
1 and 16 rows, through `Linear` itself, on the 1.5B's weight shapes. A probe, not a test.

    .venv/bin/python benchmarks/fp32_call_sizes.py --out benchmarks/results/fp32_call_sizes_NAME
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.target.cpu import compute_threads
from specblock.target.kernels import KernelPlan, Linear, _rows_invariant, median_us

SHAPES = [(2048, 1536), (17920, 1536), (1536, 8960)]  # qwen2.5-coder-1.5b: qkv, gate_up, down
SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 32, 33, 64, 65, 128)
WAYS = {"plain": (1, 0), "lone row padded to 2": (2, 0), "16-row chunks": (1, 16)}  # (min_rows, chunk_rows)


def size_classes(product, weight: torch.Tensor) -> list[list[int]]:
    """Call sizes grouped so that sizes in one group give their common rows the same bits."""
    x = torch.randn(max(SIZES), weight.shape[1], generator=torch.Generator().manual_seed(1))
    outs = {m: product(x[:m]) for m in SIZES}
    classes: list[list[int]] = []
    for m in SIZES:
        for group in classes:
            first = group[0]
            if torch.equal(outs[first][: min(first, m)], outs[m][: min(first, m)]):
                group.append(m)
                break
        else:
            classes.append([m])
    return classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = run_header()
    lines = ["# fp32 products: call-size classes, row invariance and cost", "",
             *(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in header.items()),
             f"- threads: PyTorch's pool at {compute_threads()}, at 1 for numpy (OpenBLAS's threads then have the cores,"
             " as in the engine)", "",
             "| weight (out x in) | backend | call sizes with equal bits | way | row-invariant | 1 row, ms | 16 rows, ms |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for out_f, in_f in SHAPES:
        weight = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(out_f + in_f)) / in_f**0.5
        for backend in ("torch", "onednn", "numpy"):
            torch.set_num_threads(1 if backend == "numpy" else compute_threads())
            classes = size_classes(Linear(weight, plan=KernelPlan("cpu", "float32", backend)), weight)
            shown = " / ".join(f"{c[0]}-{c[-1]}" if len(c) > 1 else str(c[0]) for c in classes)
            for way, (rows, chunk) in WAYS.items():
                lin = Linear(weight, plan=KernelPlan("cpu", "float32", backend, rows, chunk))
                ok = _rows_invariant(lambda x: lin(x, exact=True), weight)
                ms = [median_us(lambda: lin(torch.randn(m, in_f), exact=True), repeats=9) / 1000 for m in (1, 16)]
                lines.append(f"| {out_f} x {in_f} | {backend} | {shown} | {way} | {ok} | {ms[0]:.2f} | {ms[1]:.2f} |")
                print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.md").write_text("\n".join(lines) + "\n")
    (args.out / "lscpu.txt").write_text(subprocess.run(["lscpu"], capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
