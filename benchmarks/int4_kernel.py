"""PyTorch's CPU int4 weight-only product against a bf16 `F.linear`, at 1-16 rows, on the 1.5B's
MLP shape (8960 x 1536). Why: the bf16 engine reads 3x the bytes of llama.cpp's 4-bit file, so
an int4 target is the one way this engine could approach llama.cpp's plain speed; whether it
helps speculation depends on how its cost grows with the rows of a tree. Not a test; random
weights, groupwise asymmetric 4-bit (group 128), the timing only.

    python benchmarks/int4_kernel.py --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.target.kernels import median_us

OUT_FEATURES, IN_FEATURES, GROUP = 8960, 1536, 128


def pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Groupwise asymmetric 4-bit codes in the CPU kernel's packed layout, and its
    [groups, out, 2] (scale, zero) table: w ~ (q - 8) * scale + zero."""
    w = weight.float().reshape(OUT_FEATURES, IN_FEATURES // GROUP, GROUP)
    low, high = w.amin(-1), w.amax(-1)
    scale = (high - low).clamp(min=1e-6) / 15
    codes = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(OUT_FEATURES, IN_FEATURES), 1)
    zero = low + 8 * scale
    table = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight = torch.randn(OUT_FEATURES, IN_FEATURES, dtype=torch.bfloat16) * 0.02
    packed, table = pack_int4(weight)
    rows = {}
    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, IN_FEATURES, dtype=torch.bfloat16)
        int4 = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, table)  # noqa: E731
        bf16 = lambda: torch.nn.functional.linear(x, weight)  # noqa: E731
        reference = bf16().float()
        rows[m] = {
            "int4_ms": round(median_us(int4, 30) / 1e3, 4),
            "bf16_ms": round(median_us(bf16, 30) / 1e3, 4),
            "int4_rel_error": round(float((int4().float() - reference).norm() / reference.norm()), 4),
        }
        print(m, rows[m], flush=True)
    result = run_header() | {"shape": [OUT_FEATURES, IN_FEATURES], "group": GROUP, "threads": args.threads, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int4_kernel.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
