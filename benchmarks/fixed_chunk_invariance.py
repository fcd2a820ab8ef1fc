"""Are bf16 products row-invariant when every call runs a fixed number of rows?

The kernel table (`target/kernels.py`) pads calls of fewer rows than `min_rows` up to it, but runs
a larger call whole. On a CPU where no candidate came out row-invariant (the AMX Xeon, where a
row's product depends on how many rows share the call), this probes the next idea: cut every call into chunks of
exactly C rows, the last one padded with zeros, so that each row always meets the same kernel.
For the 1.5B's three weight shapes it checks 32 rows alone against the same rows inside calls of
1-320 rows (the kernel table's own check, `_rows_invariant`), and times 1 and 64 rows chunked against plain calls of 1
and 64 rows. It also copies this machine's cached kernel table beside the result. A probe for the
kernel table's next candidate, not a kernel the engine uses.

    .venv/bin/python benchmarks/fixed_chunk_invariance.py --out benchmarks/results/fixed_chunk_invariance_NAME
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks_common import run_header

from specblock.target.kernels import _rows_invariant, _table_key, kernel_table, median_us

SHAPES = [(1536, 1536), (8960, 1536), (1536, 8960)]  # qwen2.5-coder-1.5b: attention, MLP up, MLP down


def chunked(weight: torch.Tensor, chunk: int):
    """x @ weight.T run as calls of exactly `chunk` rows (the last padded with zeros)."""

    def product(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pad = (-n) % chunk
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        return torch.cat([F.linear(x[i : i + chunk], weight) for i in range(0, x.shape[0], chunk)])[:n]

    return product


def median_ms_of(fn) -> float:
    return median_us(fn, repeats=21) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = run_header()
    lines = [
        "# Fixed-row-count bf16 products: row invariance and cost",
        "",
        f"- command: `{header['command']}`",
        f"- date: {header['date']}",
        f"- machine: {header['machine']}",
        "",
        "| weight (out x in) | chunk rows | row-invariant | 1 row chunked, ms | 64 rows chunked, ms | 1 row plain F.linear, ms | 64 rows plain, ms | plain F.linear row-invariant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for out_f, in_f in SHAPES:
        gen = torch.Generator().manual_seed(out_f + in_f)
        weight = (torch.randn(out_f, in_f, generator=gen) / in_f**0.5).bfloat16()
        x = torch.randn(64, in_f, generator=gen).bfloat16()
        plain_ms = median_ms_of(lambda: F.linear(x[:1], weight))
        plain_64_ms = median_ms_of(lambda: F.linear(x[:64], weight))
        plain_ok = _rows_invariant(lambda a: F.linear(a, weight), weight)
        for chunk in map(int, args.chunks.split(",")):
            product = chunked(weight, chunk)
            ok = _rows_invariant(product, weight)
            one, many = median_ms_of(lambda: product(x[:1])), median_ms_of(lambda: product(x[:64]))
            lines.append(f"| {out_f} x {in_f} | {chunk} | {ok} | {one:.2f} | {many:.2f} | {plain_ms:.2f} | {plain_64_ms:.2f} | {plain_ok} |")
            print(lines[-1], flush=True)
    table = {name: asdict(plan) for name, plan in kernel_table().items()}  # measured if not cached yet
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.md").write_text("\n".join(lines) + "\n")
    (args.out / "kernel_table.json").write_text(json.dumps({"key": _table_key(), "plans": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
