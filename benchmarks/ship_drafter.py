"""Copy a trained (and calibrated) drafter into the package as a shipped drafter, with a
model card built from its training log and the benchmark summary.

    .venv/bin/python benchmarks/ship_drafter.py --method specblock --run /work/runs/train-specblock \
        --bench benchmarks/results/drafters_smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall_clock_s(log: list[dict]) -> float:
    """Training wall time over all segments: `elapsed_s` restarts from 0 when a run resumes."""
    total = previous = 0.0
    for entry in log:
        if entry["elapsed_s"] < previous:
            total += previous
        previous = entry["elapsed_s"]
    return total + previous


def deviations(method: str, t: dict) -> list[str]:
    """Training switches that depart from the design's recipe, said on the card."""
    out = []
    if method == "specblock" and t.get("valid_floor", 0.0) > 0:
        out.append(
            f"- Deviation from design §5: each slot's loss is divided by at least {t['valid_floor']} x its trainable "
            "positions (`--valid-floor`), not only by its valid-prefix positions; with this project's small "
            "batches the design's plain mean let 0-2 positions of slots 2-3 dominate the gradient and the drafter "
            "did not learn (see docs/drafters.md)."
        )
    if method == "specblock" and (t.get("blocks", 3) != 3 or not t.get("valid_prefix", True) or not t.get("layer_shift", True)):
        out.append(f"- Ablation switches on: blocks {t.get('blocks')}, valid_prefix {t.get('valid_prefix')}, layer_shift {t.get('layer_shift')}.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--run", type=Path, required=True, help="the `specblock train --out` directory")
    ap.add_argument("--bench", type=Path, required=True, help="a `specblock bench --out` directory")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--train-command", required=True)
    ap.add_argument("--data-command", required=True)
    args = ap.parse_args()
    out = ROOT / "src/specblock/shipped" / f"{args.target}-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(args.run / "drafter" / name, out / name)
    config = json.loads((out / "config.json").read_text())
    log = [json.loads(line) for line in (args.run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((args.run / "summary.json").read_text())
    bench = json.loads((args.bench / "summary.json").read_text())
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    t = config["training"]
    lines = [
        f"# {args.method} drafter for {args.target}",
        "",
        f"A {'SpecBlock (design §4)' if args.method == 'specblock' else 'EAGLE-3 (design §7)'} drafter, "
        f"fp16 safetensors, {size_mb:.1f} MB, draft vocabulary {config['draft_vocab_size']} tokens "
        f"(covering {100 * (t.get('draft_vocab_coverage') or 0):.1f}% of the training answer tokens).",
        "",
        "## Data",
        "- 640 UltraChat + GSM8K prompts (seed-0 shuffle of the 1,494 such rows of "
        "`../shared/data/regen/smollm2-135m.jsonl`; no ShareGPT, no Spec-Bench), 608 for training and 32 held out.",
        "- Answers: written by the same SmolLM2 weights through llama.cpp (greedy, Q4_1); features and top-20 "
        "target distributions computed on them by this project's fp32 target.",
        f"- `{args.data_command}`",
        "",
        "## Training",
        f"- `{args.train_command}`",
        f"- {t['max_steps']} AdamW steps x {t['batch_size']} sequence crops of {t['window']} positions "
        f"(the same data, vocabulary and step budget for both shipped drafters), lr {t['lr']} "
        f"(warm-up {t['warmup_steps']}, linear decay), grad clip {t['grad_clip']}.",
        *deviations(args.method, t),
        f"- wall-clock: {wall_clock_s(log) / 60:.1f} min on 2 CPU threads (the project's 2-core AVX2 machine; "
        "summed over resumed segments).",
        f"- held-out teacher-forced accuracy at depths 1-4: {summary.get('heldout_accuracy')}; "
        f"4-deep chain tau estimate {summary.get('chain_tau4')}.",
        "",
        "## Measured",
    ]
    cal = config.get("calibration")
    if cal:
        pairs = ", ".join(f"{b}: {tau:.2f} ({ms:.0f} ms)" for b, tau, ms in zip(cal["budgets"], cal["tau"], cal["draft_ms"]))
        lines.append(f"- calibration (tau and drafter ms per iteration by node budget, used by `auto`): {pairs}; {cal['prompts']}.")
    for spec, cats in bench["table"].items():
        if spec.partition("@")[0] == args.method:
            a = cats["all"]
            lines.append(
                f"- Spec-Bench ({bench['settings'].get('per_category')} per category, greedy, "
                f"{bench['settings'].get('max_new_tokens')} new tokens), `{spec}`: tau {a['tau']:.2f}, "
                f"speedup {a['speedup_mean']:.2f}x over vanilla, {a['drafter_forwards_per_iteration']:.1f} drafter "
                f"forwards and {a['draft_ms_per_iteration']:.1f} ms per iteration, output equal to vanilla: "
                f"{a['equal_to_vanilla_count']}."
            )
    lines += [
        "",
        "tau = new tokens / target forwards, the prefill counted as one (plain decoding: 1).",
        "Full report: `benchmarks/results/drafters_smollm2-135m/report.md`.",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"shipped to {out} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
