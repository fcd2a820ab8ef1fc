"""How often the verify attention's bf16 probe fails inside a fresh kernel-table measurement.

On the AMX Xeon of 2026-12-07 the probe (`attention_is_layout_invariant`, bf16, unpadded) failed
now and then when the kernel table was measured in a fresh process, yet passed when called
again right after in the same process, and in every run on its own. This runs the table in
`--processes` fresh processes and prints, for each, the verdict inside the measurement and the
verdict of a second call (not a test). The failing calls were a process's first call of the
attention's kernels: `alone_tree`, the probe's first computation, differed, and the rest
agreed. Since then the probe makes one warm-up call first, and so does `Transformer` at load
(`_warm_up_exact_kernels`): `attention_probe_repeat_xeon_spr` is before, `..._warmed` after.

    python benchmarks/attention_probe_repeat.py --processes 5 --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks_common import run_header

CHILD = """
import json, torch
from specblock.target import kernels
verdicts = []
real = kernels.attention_is_layout_invariant
kernels.attention_is_layout_invariant = lambda d, m, *heads: verdicts.append((str(d), m, real(d, m, *heads))) or verdicts[-1][2]
plans = kernels.measure_kernel_table()
inside = [v for d, m, v in verdicts if d == "torch.bfloat16"]
print(json.dumps({"inside_table": inside, "again": real(torch.bfloat16, plans["bfloat16"].attention_rows),
                  "plan": plans["bfloat16"].describe()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = []
    for i in range(args.processes):
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(i + 1, runs[-1], flush=True)
    failed = sum(not all(r["inside_table"]) for r in runs)
    record = run_header() | {"processes": args.processes, "failed_inside_table": failed, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_probe_repeat.json").write_text(json.dumps(record, indent=1))
    print(f"the bf16 attention probe failed inside the table in {failed} of {args.processes} processes")


if __name__ == "__main__":
    main()
