"""Cost of ONE batched verify forward over B requests (the server's iteration) against B solo
forwards, at short and at Spec-Bench-like contexts, in the engine's dtype.

    .venv/bin/python benchmarks/batched_verify.py --out benchmarks/results/serve_zen5/batched_verify.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_common import run_header  # noqa: E402

from specblock import SpecGenerator  # noqa: E402
from specblock.target.kernels import median_us  # noqa: E402
from specblock.target.runner import TargetRunner, verify_batch  # noqa: E402
from specblock.tree import DraftTree  # noqa: E402

CONTEXTS = {"short (200 tokens each)": [200] * 8, "Spec-Bench-like (100-2000 tokens)": [100, 200, 400, 800, 1200, 1600, 2000, 300]}


def bushy_tree(nodes: int) -> DraftTree:
    tree = DraftTree()
    for i in range(nodes):
        tree.add(100 + i, (i - 1) // 2 if i else -1)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = SpecGenerator.load(args.target, method="vanilla").target
    rows = []
    for label, contexts in CONTEXTS.items():
        for batch in (1, 2, 4, 8):
            for nodes in (0, 4, 16):
                caches = model.new_cache_pool(batch, max(contexts) + 64)
                runners = []
                for cache, length in zip(caches, contexts[:batch]):
                    runner = TargetRunner(model, cache)
                    runner.prefill([(7 * i + 11) % 1000 + 10 for i in range(length)], length + 40, capture=False)
                    runners.append(runner)
                tree = bushy_tree(nodes)
                together = median_us(lambda: verify_batch(runners, [5] * batch, [tree] * batch, capture=False), 7)
                alone = sum(median_us(lambda r=r: r.verify(5, tree, capture=False), 7) for r in runners)
                rows.append({"contexts": label, "batch": batch, "nodes": nodes, "batched_ms": round(together / 1000, 2),
                             "solo_sum_ms": round(alone / 1000, 2), "speedup": round(alone / together, 2)})  # fmt: skip
                print(rows[-1], flush=True)
    report = {**run_header(), "dtype": model.dtype_name, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
