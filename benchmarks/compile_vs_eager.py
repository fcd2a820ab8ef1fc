"""torch.compile (inductor, CPU) against eager for the target's verify forward (issue 14, item 2).

One forward over n rows (the root plus n-1 tree nodes, a chain) after a fixed context, in the
engine's dtype, timed eager and compiled with several inductor settings. Shapes are static
(fixed context and n), the most favourable case for compilation: if compiling does not win
here, it does not win with the shape buckets a real run would need. Not a test.

    python benchmarks/compile_vs_eager.py --dtype bfloat16 --rows 1,17 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from benchmarks_common import run_header

from specblock.api import SpecGenerator
from specblock.target.kernels import median_us
from specblock.models.resolve import resolve_model
from specblock.target.transformer import Transformer, load_safetensors_dir
from specblock.tree import DraftTree, verify_layout, verify_paths

SETTINGS = {
    "default": {},
    "freezing": {"freezing": True},
    "freezing+cpp_wrapper": {"freezing": True, "cpp_wrapper": True},
    "max-autotune": {"max_autotune": True},
}


def median_ms(fn) -> float:
    return median_us(fn, repeats=20) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", default="1,17")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = SpecGenerator.load(args.target, "vanilla", dtype=args.dtype).target
    # inductor cannot take oneDNN's pre-packed weights (it packs its own when freezing): the
    # compiled model gets the same weights in F.linear's layout, padded the same way
    weights = load_safetensors_dir(resolve_model(args.target), model.dtype, "cpu")
    for_compile = Transformer(model.cfg, weights, model.dtype, "cpu", plan=replace(model.plan, backend="torch"))
    vocab = model.cfg.vocab_size
    results = []
    for n in map(int, args.rows.split(",")):
        with torch.no_grad():  # a normal tensor, not an inference one, so that compiled code may write it
            cache = model.new_cache(args.context + n + 2)
        prompt = torch.tensor([(17 * i + 3) % vocab for i in range(args.context)])
        with torch.no_grad():
            plain_prefill = Transformer.forward.__wrapped__
            plain_prefill(model, prompt, torch.arange(args.context), cache, 0)
        tree = DraftTree()
        for i in range(n - 1):
            tree.add((5 * i + 11) % vocab, i - 1)
        tree_mask, depth = verify_layout(tree)
        mask = torch.cat([torch.ones(n, args.context, dtype=torch.bool), tree_mask], dim=1)
        paths = verify_paths(tree) if model.batch_invariant else None
        tokens, positions = torch.tensor([1, *tree.tokens]), args.context + depth
        top = int(positions.max())  # given, so that the graph has no data-dependent branch

        def forward():
            return model.forward(tokens, positions, cache, args.context, attn_mask=mask, paths=paths, max_position=top).hidden

        plain = Transformer.forward.__wrapped__  # without inference mode, whose tensors inductor cannot trace into

        def traced():
            with torch.no_grad():
                return plain(for_compile, tokens, positions, cache, args.context, attn_mask=mask, paths=paths,
                             max_position=top).hidden  # fmt: skip

        row = {"rows": n, "eager_ms": round(median_ms(forward), 2), "eager_f_linear_ms": round(median_ms(traced), 2)}
        for name in args.settings.split(","):
            torch._dynamo.reset()
            with torch._inductor.config.patch(SETTINGS[name]):
                compiled = torch.compile(traced)
                t0 = time.perf_counter()
                try:
                    compiled()
                except Exception as exc:  # an inductor failure is a result too
                    row[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
                    continue
                row[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
                row[f"{name}_ms"] = round(median_ms(compiled), 2)
        print(json.dumps(row), flush=True)
        results.append(row)
    record = {
        **run_header(), "target": args.target, "dtype": model.dtype_name, "results": results,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile_vs_eager.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
