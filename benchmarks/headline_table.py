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
from collections import Counter
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


def base_name(method: str) -> str:
    return method.split("@", 1)[0]


def cells(summary: dict, rows: list[dict], method: str | None) -> list[str]:
    """nodes, tau, tokens/s, speedup of one method over all categories ("-" where absent).
    A reference engine's tau is known only from rows that carry its draft counts (older
    llama-server rows do not)."""
    entry = summary["table"].get(method or "", {}).get("all")
    if entry is None:
        return ["-"] * 4
    nodes = summary["settings"].get("node_budgets", {}).get(method, "-")
    if any(r.get("reference") for r in rows if r["method"] == method):
        counted = all("draft_tokens" in r for r in rows if r["method"] == method)
        tau = f"{entry['tau']:.2f}" if counted else "-"
    else:
        tau = f"{entry['tau']:.2f}"
    if entry.get("tokens_per_s_mean") is None:  # every row of it timed across a pause (`suspended`)
        return [str(nodes), tau, "-", "-"]
    std = f" ± {entry['tokens_per_s_std']:.1f}" if entry.get("tokens_per_s_std") else ""
    return [str(nodes), tau, f"{entry['tokens_per_s_mean']:.1f}{std}", f"{entry['speedup_mean']:.2f}x"]


def table(report: tuple[dict, list[dict]], heldout: tuple[dict, list[dict]] | None) -> list[str]:
    """One line per method of the report; the held-out bench's method of the same name beside
    it, whatever its budget label (`@16` in the report, `@auto` held out)."""
    head = "| method | nodes | Spec-Bench tau | tokens/s | speedup |"
    rule = "|---|---|---|---|---|"
    if heldout:
        head += " held out: nodes | tau | tokens/s | speedup |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for m in report[0]["methods"]:
        row = [m, *cells(*report, m)]
        if heldout:
            row += cells(*heldout, method_named(heldout[0], base_name(m)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def paired(rows: list[dict], a: str, b: str) -> dict:
    """a / b tokens/s per question; against a reference engine (measured in run 1 only) on run 1's rows."""
    if any(r.get("reference") for r in rows if r["method"] == b):
        rows = [r for r in rows if r["run"] == 1]
    c = compare(rows, a, b)
    lo, hi = c["ci95_mean_ratio"]
    c["text"] = (f"{a} / {b} tokens/s, paired over {c['pairs']} questions{' (run 1)' if rows and all(r['run'] == 1 for r in rows) else ''}: "
                 f"{c['mean_ratio']:.3f} (95% CI {lo:.3f}-{hi:.3f}), {a} faster on {c['a_faster_on']}, "
                 f"Wilcoxon p = {c['wilcoxon']['p_value']:.2g}")  # fmt: skip
    return c


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def ratio_verdict(c: dict, threshold: float) -> str:
    """Met when the whole 95% interval clears the threshold, missed when it lies below, else open."""
    lo, hi = c["ci95_mean_ratio"]
    if lo >= threshold:
        return "**met**"
    if hi < threshold:
        return "**missed**"
    return f"**not settled** (the interval spans {threshold})"


def targets(name: str, summary: dict, rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Issue 15's targets on one prompt set."""
    sb, e3 = method_named(summary, "specblock"), method_named(summary, "eagle3")
    if sb is None:
        return [f"- {name}: no SpecBlock row"]
    entry = summary["table"][sb]["all"]
    nodes = summary["settings"].get("node_budgets", {}).get(sb)
    within = f"at <= {args.max_nodes} nodes"
    if nodes is None:
        tau_verdict = "**unknown** (the node budget is not recorded)"
    elif nodes > args.max_nodes:
        tau_verdict = f"**not this row** ({nodes} nodes > {args.max_nodes})"
    else:
        tau_verdict = verdict(entry["tau"] >= args.tau)
    lines = [
        f"- {name}, SpecBlock tau >= {args.tau} {within}: {entry['tau']:.2f} at {nodes} nodes (this row's budget), "
        + tau_verdict,
        f"- {name}, speedup over vanilla >= {args.speedup}x: "
        + ("no timed rows (all `suspended`)" if entry["speedup_mean"] is None
           else f"{entry['speedup_mean']:.2f}x, " + verdict(entry["speedup_mean"] >= args.speedup)),
    ]
    if e3 is not None:
        c = paired(rows, sb, e3)
        lines.append(f"- {name}, SpecBlock / EAGLE-3 >= {args.ratio}: {c['text']}; " + ratio_verdict(c, args.ratio))
    for engine in LLAMA:
        if engine in summary["table"]:
            c = paired(rows, sb, engine)
            lines.append(f"- {name}, faster than {engine}: {c['text']}; " + ratio_verdict(c, 1.0))
    return lines


def runs_measured(rows: list[dict]) -> str:
    """'2 runs', or '2 runs and run 3 in part (30 of 35 vanilla rows)': counted from the rows,
    since a resumed report's settings give the --runs of the last command that measured."""
    counts = Counter(r["run"] for r in rows if r["method"] == "vanilla")
    full = max(counts.values(), default=0)
    complete = sum(c == full for c in counts.values())
    partial = [f"run {run} in part ({c} of {full} vanilla rows)" for run, c in sorted(counts.items()) if c < full]
    return " and ".join([f"{complete} runs", *partial])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, required=True, help="a full_report.sh directory (its t0/ is read)")
    ap.add_argument("--heldout", type=Path, default=None, help="a bench directory on held-out prompts")
    ap.add_argument("--tau", type=float, default=3.0, help="issue 15: 3.0 for the 1.5B, 2.5 for smollm2")
    ap.add_argument("--max-nodes", type=int, default=32, help="issue 15: 32 for the 1.5B, 16 for smollm2")
    ap.add_argument("--speedup", type=float, default=2.5)
    ap.add_argument("--ratio", type=float, default=1.10)
    args = ap.parse_args()
    report, report_rows = load(args.report / "t0")
    heldout, heldout_rows = load(args.heldout) if args.heldout else (None, [])
    s = report["settings"]
    print(f"{s.get('target')} ({s.get('dtype_resolved')}), {s.get('machine')}; greedy, {runs_measured(report_rows)}, "
          f"at most {s.get('max_new_tokens')} new tokens; tokens/s mean ± std over runs (llama.cpp rows: run 1)\n")  # fmt: skip
    print("\n".join(table((report, report_rows), (heldout, heldout_rows) if heldout else None)))
    print("\nTargets (issue 15):\n")
    print("\n".join(targets("Spec-Bench", report, report_rows, args)))
    if heldout:
        print("\n".join(targets("held-out code", heldout, heldout_rows, args)))


if __name__ == "__main__":
    main()
