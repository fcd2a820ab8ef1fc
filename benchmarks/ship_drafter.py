"""Copy a trained (and calibrated) drafter into the package as a shipped drafter, with a
model card: the training card's sections (shape, data manifest, settings, held-out accuracy),
the commands, the wall clock from the training log and the benchmark summary's rows.

    .venv/bin/python benchmarks/ship_drafter.py --method specblock --run /work/runs/train-specblock \
        --bench benchmarks/results/drafters_smollm2-135m

`--bench` may be given more than once (Spec-Bench and a held-out set) or left out: the card then
says that no benchmark has measured the drafter yet. Shipping again with the same run rewrites
the card and leaves the weights' bytes as they were.

Once the training run is gone (its directory, or the data manifest the card's Data section is
made from), `--measured-only` rewrites just the card's "Measured" section of a shipped drafter
from the given benches and leaves every other line and the weights as they are:

    .venv/bin/python benchmarks/ship_drafter.py --measured-only --method specblock \
        --target qwen2.5-coder-1.5b --bench benchmarks/results/report15_qwen2.5-coder-1.5b/t0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks_common import machine_description

from specblock.drafters.model_card import card_sections
from specblock.training.train_state import RUN_LEGACY_SETTINGS

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
    t = RUN_LEGACY_SETTINGS | t  # a run saved before a setting existed was trained with its legacy value
    if method == "specblock" and t["valid_floor"] > 0:
        out.append(
            f"- Deviation from design §5: each slot's loss is its sum over the valid-prefix positions divided by at "
            f"least {t['valid_floor']} x its trainable positions (`--valid-floor`), not the plain mean over the valid "
            "ones. With this project's small batches the plain mean let 0-2 positions of slots 2-3 dominate the "
            "gradient; a floor of 1 weighs each slot by how often its prefix is right, as the accepted length does "
            "(docs/drafters.md, benchmarks/results/slot_weights_qwen2.5-coder-1.5b)."
        )
    if method == "specblock" and t.get("layer_shift", True) and not t["shift_slot0"]:
        out.append(
            "- Deviation from design §4: the layer-wise shift leaves slot 0's hidden unprojected and its projection "
            "starts as [I ; 0]; the design's form slowed slot 0's learning (benchmarks/results/"
            "shift_slot0_qwen2.5-coder-1.5b)."
        )
    if method == "specblock" and (
        t.get("blocks", 3) != 3 or not t.get("valid_prefix", True) or not t.get("layer_shift", True)
    ):
        out.append(
            f"- Ablation switches on: blocks {t.get('blocks')}, valid_prefix {t.get('valid_prefix')}, layer_shift {t.get('layer_shift')}."
        )
    return out


def report_path(bench: Path) -> str:
    """The bench's report as the card names it: relative to the repository when inside it."""
    report = bench.resolve() / "report.md"
    return str(report.relative_to(ROOT) if report.is_relative_to(ROOT) else bench / "report.md")


def measured_lines(method: str, config: dict, benches: list[dict]) -> list[str]:
    """The calibration the drafter carries and its rows of each `specblock bench` summary."""
    lines = []
    cal = config.get("calibration")
    if cal:
        pairs = ", ".join(
            f"{b}: {tau:.2f} ({ms:.0f} ms)" for b, tau, ms in zip(cal["budgets"], cal["tau"], cal["draft_ms"])
        )
        lines.append(
            f"- calibration (tau and drafter ms per iteration by node budget, used by `auto`): {pairs}; {cal['prompts']}."
        )
    if not benches:
        lines.append("- No benchmark has measured this drafter yet: see the README's status table.")
    for bench in benches:
        settings = bench["settings"]
        for spec, cats in bench["table"].items():
            if spec.partition("@")[0] != method:
                continue
            a = cats["all"]
            equal = a["equal_to_vanilla_count"] if a.get("equal_to_vanilla_count") is not None else "not compared (sampling)"
            lines.append(
                f"- `{settings.get('data', 'Spec-Bench')}` ({settings.get('per_category')} per category, "
                f"{'greedy' if not settings.get('temperature') else 'temperature ' + str(settings['temperature'])}, "
                f"{settings.get('max_new_tokens')} new tokens, {settings.get('dtype_resolved', settings.get('dtype', '?'))}, "
                f"{settings.get('runs', '?')} run(s)), `{spec}`: tau {a['tau']:.2f}, "
                f"speedup {a['speedup_mean']:.2f}x over vanilla, {a['drafter_forwards_per_iteration']:.1f} drafter "
                f"forwards and {a['draft_ms_per_iteration']:.1f} ms per iteration, output equal to vanilla: "
                f"{equal}; {settings.get('cpu', 'CPU not recorded')}."
            )
    return lines


def measured_section(method: str, config: dict, bench_dirs: list[Path]) -> list[str]:
    """The card's "Measured" section, from the calibration and each bench's summary."""
    benches = [json.loads((bench / "summary.json").read_text()) for bench in bench_dirs]
    return [
        "## Measured",
        *measured_lines(method, config, benches),
        "",
        "tau = new tokens / target forwards, the prefill counted as one (plain decoding: 1).",
        *(f"Full report: `{report_path(bench)}`." for bench in bench_dirs),
        "",
    ]


def rewrite_measured(out: Path, method: str, bench_dirs: list[Path]) -> None:
    """Replace the card's "Measured" section (up to "## Use") and nothing else."""
    card = (out / "README.md").read_text().splitlines()
    if "## Measured" not in card or "## Use" not in card:
        raise SystemExit(f"{out / 'README.md'} has no '## Measured' ... '## Use' sections to rewrite")
    start, end = card.index("## Measured"), card.index("## Use")
    config = json.loads((out / "config.json").read_text())
    card[start:end] = measured_section(method, config, bench_dirs)
    (out / "README.md").write_text("\n".join(card) + "\n")
    print(f"rewrote the Measured section of {out / 'README.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--run", type=Path, help="the `specblock train --out` directory")
    ap.add_argument("--bench", type=Path, action="append", default=[], help="a `specblock bench --out` directory (repeatable)")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--train-command")
    ap.add_argument("--data-command")
    ap.add_argument("--measured-only", action="store_true", help="rewrite only the shipped card's Measured section")
    ap.add_argument("--train-machine", default=machine_description(), help="where the training ran (default: here)")
    args = ap.parse_args()
    out = ROOT / "src/specblock/shipped" / f"{args.target}-{args.method}"
    if args.measured_only:
        rewrite_measured(out, args.method, args.bench)
        return
    if not (args.run and args.train_command and args.data_command):
        ap.error("--run, --train-command and --data-command are required (unless --measured-only)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(args.run / "drafter" / name, out / name)
    config = json.loads((out / "config.json").read_text())
    t = config["training"]
    log = [json.loads(line) for line in (args.run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((args.run / "summary.json").read_text())
    manifest = json.loads((Path(t["data"]) / "manifest.json").read_text())
    lines = card_sections(out, args.target, manifest, summary, t)
    data_end = lines.index("## Training") - 1  # the blank line that closes the Data section
    lines.insert(data_end, f"- `{args.data_command}`")
    lines += [
        f"- `{args.train_command}`",
        *deviations(args.method, t),
        (
            f"- Wall clock: {wall_clock_s(log) / 60:.1f} min on {t.get('device', 'cpu')} ({args.train_machine}; "
            "summed over resumed segments)."
        ),
        "",
        *measured_section(args.method, config, args.bench),
        "## Use",
        "Shipped with the package: the target's default drafter for this method, no `--drafter` needed.",
        f'`specblock generate --target {args.target} --method {args.method} --prompt "..."`',
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"shipped to {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
