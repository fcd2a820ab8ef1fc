"""`report.md`: settings, definitions and tables rendered from the summary dict."""

from __future__ import annotations

import math

from specblock.bench.summary import MAX_SLOT


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}{suffix}"


def _pm(mean: float | None, std: float | None, digits: int = 2, suffix: str = "") -> str:
    if std is None:
        return _f(mean, digits, suffix)
    return f"{_f(mean, digits, suffix)} ± {std:.{digits}f}"


def _equal(entry: dict) -> str:
    flag = entry["equal_to_vanilla"]
    return "n/a" if flag is None else ("yes" if flag else "NO") + f" ({entry['equal_to_vanilla_count']})"


def settings_lines(s: dict) -> list[str]:
    temp = s.get("temperature", 0.0)
    return [
        f"- command: `{s.get('command') or '-'}`",
        f"- date: {s.get('date', '-')}",
        *[f"- resumed {r.get('date')}: `{r.get('command') or '-'}`" for r in s.get("resumed", [])],
        f"- machine: {s.get('machine', '-')}",
        f"- target: {s.get('target', '-')} ({s.get('dtype_resolved') or s.get('dtype', '-')}, {s.get('device', '-')}), batch 1, "
        + (
            "greedy (T=0)"
            if temp == 0
            else f"sampling T={temp}, seed {s.get('seed')} (per request seed from seed, question, run, turn)"
        ),
        (
            f"- data: {s.get('data', '-')}, first {s.get('per_category', '-')} questions per category, "
            f"{s.get('runs', '-')} run(s), at most {s.get('max_new_tokens', '-')} new tokens"
        ),
        f"- node budgets: {s.get('node_budgets', {})}; drafters: {s.get('drafters') or 'defaults (shipped)'}",
        "- order: per run, per question, per turn, every method back to back (interleaved), vanilla first",
    ]


def render_report(summary: dict, figures: list[str] | None = None) -> str:
    s, table, cats = summary.get("settings", {}), summary["table"], summary["categories"]
    lines = ["# specblock bench", "", *settings_lines(s), f"- turns: {summary['turns']}"]
    if summary.get("suspended_rows"):
        lines.append(f"- **{summary['suspended_rows']} row(s) timed across a stop of the process** (`suspended` in "
                     "results.jsonl): left out of the timings, counted in tau and the output check")
    lines += ["", "## Definitions", ""]
    lines += [f"{line}" for line in summary["definitions"].splitlines()]
    lines += [
        (
            "- std = sample standard deviation over runs; output = vanilla: token-for-token equal to vanilla's "
            "output for the same question, turn and run (greedy only)."
        ),
        "- per-slot acceptance d = fraction of verify iterations that kept at least d draft tokens.",
        "",
        "## Speed",
        "",
        (
            "| method | category | tau | tokens/s (mean ± std over runs) | decode tokens/s | speedup vs vanilla "
            "(mean ± std over runs) | output = vanilla |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(m, c, table[m][c]) for m in summary["methods"] for c in cats if c in table[m]]
    for m, c, e in rows:
        lines.append(
            f"| {m} | {c} | {_f(e['tau'])} | {_pm(e['tokens_per_s_mean'], e['tokens_per_s_std'])} | "
            f"{_f(e['decode_tokens_per_s'])} | {_pm(e['speedup_mean'], e['speedup_std'], suffix='x')} | {_equal(e)} |"
        )
    lines += [
        "", "## Cost per iteration", "",
        (
            "| method | category | drafter forwards / iteration | drafter ms / iteration | target ms / iteration "
            "| nodes / tree | prefill ms (mean) | mean accepted length |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for m, c, e in rows:
        lines.append(
            f"| {m} | {c} | {_f(e['drafter_forwards_per_iteration'])} | {_f(e['draft_ms_per_iteration'], 1)} | "
            f"{_f(e['target_ms_per_iteration'], 1)} | {_f(e['mean_tree_nodes'], 1)} | {_f(e['prefill_ms_mean'], 1)} | "
            f"{_f(e['mean_accepted_length'])} |"
        )
    slots = " | ".join(f"d>={d}" for d in range(1, MAX_SLOT + 1))
    lines += ["", "## Per-slot acceptance", "", f"| method | category | {slots} |", "|---|---|" + "---|" * MAX_SLOT]
    for m, c, e in rows:
        if m != "vanilla":
            lines.append(f"| {m} | {c} | " + " | ".join(_f(v) for v in e["slot_acceptance"]) + " |")
    lines += ["", "## Acceptance-length histogram (all categories; iterations keeping 0, 1, 2, ... draft tokens)", ""]
    for m in summary["methods"]:
        if m != "vanilla" and "all" in table[m]:
            hist = table[m]["all"]["accept_length_hist"]
            lines.append(f"- {m}: " + ", ".join(f"{k}: {n}" for k, n in enumerate(hist)))
    lines += ["", "## Paired comparison", ""]
    if not summary["comparisons"]:
        lines.append("No pair compared (by default SpecBlock vs EAGLE-3 when both ran).")
    for cmp in summary["comparisons"]:
        w = cmp["wilcoxon"]
        lo, hi = cmp["ci95_mean_ratio"]
        lines.append(
            f"- {cmp['a']} vs {cmp['b']}: per question tokens/s ratio {cmp['a']}/{cmp['b']} over {cmp['pairs']} "
            f"questions (turns and runs pooled per question): mean {_f(cmp['mean_ratio'], 3)}, geometric mean "
            f"{_f(cmp['geometric_mean_ratio'], 3)}, bootstrap 95% CI of the mean [{_f(lo, 3)}, {_f(hi, 3)}] "
            f"(10,000 resamples, seed 0); {cmp['a']} faster on {cmp['a_faster_on']}/{cmp['pairs']}; "
            f"Wilcoxon signed-rank on the log ratios ({w['method']}, two-sided): W = {w['statistic']:g}, "
            f"n = {w['n']}, p = {w['p_value']:.3g}"
        )
        per_category = cmp.get("by_category") or {}
        if per_category:
            header = f"| category | questions | {cmp['a']}/{cmp['b']} tokens/s, geometric mean | range | {cmp['a']} faster on |"
            lines += ["", header, "|---|---|---|---|---|"]
            for c, e in per_category.items():
                lines.append(
                    f"| {c} | {e['pairs']} | {_f(e['geometric_mean_ratio'], 3)} | "
                    f"{_f(e['min_ratio'], 2)}-{_f(e['max_ratio'], 2)} | {e['a_faster_on']}/{e['pairs']} |"
                )
            lines.append("")
    while lines and not lines[-1]:
        lines.pop()
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
