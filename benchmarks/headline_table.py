"""The README's headline table from a full report: every method's tau, tokens/s and speedup
on Spec-Bench (the report's greedy runs) and, when given, on the held-out code prompts; then
SpecBlock's paired comparisons and issue 15's targets, each marked met or missed.

    python benchmarks/headline_table.py --report benchmarks/results/report15_qwen2.5-coder-1.5b \
        [--heldout benchmarks/results/report15_qwen2.5-coder-1.5b/heldout_code] > headline.md

Numbers come from the benchmark's own summary.json and results.jsonl, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specblock.bench.results import RESULTS, read_rows
from specblock.bench.summary import compare

LLAMA = ("llama.cpp-server", "llama.cpp-server-eagle3")  # the engines the issue asks us to beat


def load(bench: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((bench / "summary.json").read_text())
    return summary, read_rows(bench / RESULTS)


def method_named(summary: dict, name: str) -> str | None:
    """The label of a method (`specblock@auto`, `eagle3@16`, ...) in a summary, None if absent."""
    return next((m for m in summary["methods"] if m == name or m.startswith(name + "@")), None)


def cells(summary: dict, method: str) -> list[str]:
    entry = summary["table"].get(method, {}).get("all")
    if entry is None:
        return ["-", "-", "-"]
    drafted = entry["iterations"] > 0 or method.startswith("llama.cpp-server-")
    tau = f"{entry['tau']:.2f}" if drafted or method == "vanilla" else "-"
    std = f" ± {entry['tokens_per_s_std']:.1f}" if entry.get("tokens_per_s_std") else ""
    return [tau, f"{entry['tokens_per_s_mean']:.1f}{std}", f"{entry['speedup_mean']:.2f}x"]


def table(report: dict, heldout: dict | None) -> list[str]:
    budgets = report["settings"].get("node_budgets", {})
    head = "| method | nodes | Spec-Bench tau | tokens/s | speedup |"
    rule = "|---|---|---|---|---|"
    if heldout:
        head += " held-out code tau | tokens/s | speedup |"
        rule += "---|---|---|"
    lines = [head, rule]
    for m in report["methods"]:
        row = [m, str(budgets.get(m, "-")), *cells(report, m)]
        if heldout:
            row += cells(heldout, m)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def paired(rows: list[dict], a: str, b: str) -> dict:
    c = compare(rows, a, b)
    lo, hi = c["ci95_mean_ratio"]
    c["text"] = (f"{a} / {b} tokens/s, paired over {c['pairs']} questions: {c['mean_ratio']:.3f} "
                 f"(95% CI {lo:.3f}-{hi:.3f}), {a} faster on {c['a_faster_on']}, Wilcoxon p = {c['wilcoxon']['p_value']:.2g}")  # fmt: skip
    return c


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(name: str, summary: dict, rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Issue 15's targets on one prompt set."""
    sb, e3 = method_named(summary, "specblock"), method_named(summary, "eagle3")
    if sb is None:
        return [f"- {name}: no SpecBlock row"]
    entry = summary["table"][sb]["all"]
    nodes = summary["settings"].get("node_budgets", {}).get(sb)
    lines = [
        f"- {name}, SpecBlock tau >= {args.tau} at <= 32 nodes: {entry['tau']:.2f} at {nodes} nodes, "
        + verdict(entry["tau"] >= args.tau and (nodes or 0) <= 32),
        f"- {name}, speedup over vanilla >= {args.speedup}x: {entry['speedup_mean']:.2f}x, "
        + verdict(entry["speedup_mean"] >= args.speedup),
    ]
    if e3 is not None:
        c = paired(rows, sb, e3)
        lines.append(f"- {name}, SpecBlock / EAGLE-3 >= {args.ratio}: {c['text']}; " + verdict(c["mean_ratio"] >= args.ratio))
    for engine in LLAMA:
        if engine in summary["table"]:
            c = paired(rows, sb, engine)
            lines.append(f"- {name}, faster than {engine}: {c['text']}; " + verdict(c["mean_ratio"] > 1))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, required=True, help="a full_report.sh directory (its t0/ is read)")
    ap.add_argument("--heldout", type=Path, default=None, help="a bench directory on held-out prompts")
    ap.add_argument("--tau", type=float, default=3.0)
    ap.add_argument("--speedup", type=float, default=2.5)
    ap.add_argument("--ratio", type=float, default=1.10)
    args = ap.parse_args()
    report, report_rows = load(args.report / "t0")
    heldout, heldout_rows = load(args.heldout) if args.heldout else (None, [])
    s = report["settings"]
    print(f"{s.get('target')} ({s.get('dtype_resolved')}), {s.get('machine')}; greedy, {s.get('runs')} runs, "
          f"at most {s.get('max_new_tokens')} new tokens; tokens/s mean ± std over runs (llama.cpp rows: run 1)\n")  # fmt: skip
    print("\n".join(table(report, heldout)))
    print("\nTargets (issue 15):\n")
    print("\n".join(targets("Spec-Bench", report, report_rows, args)))
    if heldout:
        print("\n".join(targets("held-out code", heldout, heldout_rows, args)))


if __name__ == "__main__":
    main()
