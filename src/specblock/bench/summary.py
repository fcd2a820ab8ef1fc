"""From `results.jsonl` to per method x category figures, paired comparisons and `summary.json`.

Definitions (the same as `specblock generate`):
- tau = total new tokens / total target forwards, the prefill counted as one forward (pooled).
- tokens/s = total new tokens / total request wall time, prefill included (pooled);
  decode tokens/s = tokens after the first / wall time after the prefill.
- speedup (run r) = a method's pooled tokens/s / vanilla's pooled tokens/s over the same
  prompts and turns in run r; reported as mean ± sample std over runs.
- a row whose timing spans a pause of the process (`suspended`: still so after the bench's
  retries) is left out of every timing, and its counterpart with it (vanilla's in that run's
  speedup, the other method's in a paired test); tau, the acceptance and the output check count it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from specblock.bench.methods import base_name
from specblock.bench.prompts import category_order
from specblock.bench.results import RESULTS, read_rows, read_settings
from specblock.bench.stats import bootstrap_mean_ci, mean_std, wilcoxon_signed_rank

MAX_SLOT = 8  # per-slot acceptance for d = 1..8


def timed(rows: list[dict]) -> list[dict]:
    """The rows whose timings hold: not `suspended` (a pause of the process sits in their wall time)."""
    return [r for r in rows if not r.get("suspended")]


def _tps(rows: list[dict]) -> float:
    wall = sum(r["wall_s"] for r in rows)
    return sum(r["new_tokens"] for r in rows) / wall if wall > 0 else math.nan


def _prompt_turn(row: dict) -> tuple[str, int]:
    return json.dumps(row["question_id"]), int(row["turn"])


def run_speedups(rows: list[dict], vanilla: list[dict]) -> dict[int, float]:
    """Per run: pooled tokens/s of `rows` / pooled tokens/s of vanilla on the same (prompt, turn)s."""
    out = {}
    for run in sorted({r["run"] for r in rows}):
        mine = {_prompt_turn(r): r for r in rows if r["run"] == run}
        ref = {_prompt_turn(r): r for r in vanilla if r["run"] == run}
        common = sorted(set(mine) & set(ref))
        if common:
            out[run] = _tps([mine[k] for k in common]) / _tps([ref[k] for k in common])
    return out


def acceptance(rows: list[dict]) -> dict:
    """Per-slot acceptance (fraction of iterations keeping >= d draft tokens) and the histogram."""
    lengths = [a for r in rows for a in r["accepted_lengths"]]
    n = len(lengths)
    hist = [0] * (max(lengths, default=0) + 1)
    for a in lengths:
        hist[a] += 1
    return {
        "iterations": n,
        "mean_accepted_length": sum(lengths) / n if n else None,
        "slot_acceptance": [sum(a >= d for a in lengths) / n if n else None for d in range(1, MAX_SLOT + 1)],
        "accept_length_hist": hist,
    }


def metrics(rows: list[dict], vanilla: list[dict]) -> dict:
    """Every figure for one method x category: timings from the `timed` rows, the rest from all."""
    tokens = sum(r["new_tokens"] for r in rows)
    forwards = sum(r["iterations"] for r in rows)
    iters = sum(len(r["accepted_lengths"]) for r in rows)  # verify iterations (the prefill excluded)
    clean = timed(rows)
    decode_s = sum(r["wall_s"] - r["prefill_s"] for r in clean)
    timed_iters = sum(len(r["accepted_lengths"]) for r in clean)
    per_run = {run: _tps([r for r in clean if r["run"] == run]) for run in sorted({r["run"] for r in clean})}
    speedups = run_speedups(clean, timed(vanilla))
    tps_mean, tps_std = mean_std(list(per_run.values()))
    sp_mean, sp_std = mean_std(list(speedups.values()))
    checked = [r["equal_to_vanilla"] for r in rows if r.get("equal_to_vanilla") is not None]
    return {
        "rows": len(rows),
        "prompts": len({json.dumps(r["question_id"]) for r in rows}),
        "runs": len({r["run"] for r in rows}),
        "new_tokens": tokens,
        "target_forwards": forwards,
        "tau": tokens / forwards if forwards else None,
        "tokens_per_s": _tps(clean) if clean else None,
        "tokens_per_s_mean": tps_mean,
        "tokens_per_s_std": tps_std,
        "decode_tokens_per_s": sum(r["new_tokens"] - 1 for r in clean) / decode_s if decode_s > 0 else None,
        "speedup_per_run": speedups,
        "speedup_mean": sp_mean,
        "speedup_std": sp_std,
        "drafter_forwards_per_iteration": sum(r["drafter_forwards"] for r in rows) / iters if iters else None,
        "draft_ms_per_iteration": sum(sum(r["draft_ms"]) for r in clean) / timed_iters if timed_iters else None,
        "target_ms_per_iteration": sum(sum(r["target_ms"]) for r in clean) / timed_iters if timed_iters else None,
        "mean_tree_nodes": sum(r["mean_tree_nodes"] * len(r["accepted_lengths"]) for r in rows) / iters
        if iters
        else None,
        "prefill_ms_mean": 1000 * sum(r["prefill_s"] for r in clean) / len(clean) if clean else None,
        **acceptance(rows),
        "equal_to_vanilla": all(checked) if checked else None,
        "equal_to_vanilla_count": f"{sum(checked)}/{len(checked)}" if checked else None,
    }


def per_prompt_tps(rows: list[dict]) -> dict[str, float]:
    """Tokens/s of each question (its turns and runs pooled)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[json.dumps(r["question_id"])].append(r)
    return {q: _tps(rs) for q, rs in groups.items()}


def compare(rows: list[dict], a: str, b: str, seed: int = 0) -> dict:
    """Paired test of method a against b: per question the tokens/s ratio a/b (turns and runs
    pooled), Wilcoxon signed-rank on the log ratios, and a bootstrap 95% CI of the mean ratio;
    per category, the geometric mean and range of the ratios (too few questions for a test)."""
    pair = [r for r in rows if r["method"] in (a, b)]
    stopped = {(*_prompt_turn(r), r["run"]) for r in pair if r.get("suspended")}
    kept = [r for r in pair if (*_prompt_turn(r), r["run"]) not in stopped]  # both sides alike
    ta = per_prompt_tps([r for r in kept if r["method"] == a])
    tb = per_prompt_tps([r for r in kept if r["method"] == b])
    common = sorted(set(ta) & set(tb))
    ratios = [ta[q] / tb[q] for q in common]
    test = wilcoxon_signed_rank([math.log(x) for x in ratios])
    lo, hi = bootstrap_mean_ci(ratios, seed=seed)
    category = {json.dumps(r["question_id"]): r["category"] for r in rows}
    by_category: dict[str, list[float]] = defaultdict(list)
    for q, ratio in zip(common, ratios):
        by_category[category[q]].append(ratio)
    return {
        "a": a, "b": b, "pairs": len(ratios),
        "mean_ratio": sum(ratios) / len(ratios) if ratios else None,
        "geometric_mean_ratio": _geometric_mean(ratios),
        "ci95_mean_ratio": [lo, hi], "a_faster_on": sum(x > 1 for x in ratios),
        "wilcoxon": test, "unit": "question (turns and runs pooled)",
        "by_category": {
            c: {"pairs": len(rs), "geometric_mean_ratio": _geometric_mean(rs), "min_ratio": min(rs),
                "max_ratio": max(rs), "a_faster_on": sum(x > 1 for x in rs)}
            for c in category_order(set(by_category)) for rs in [by_category[c]]
        },
    }  # fmt: skip


def _geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def default_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """SpecBlock vs EAGLE-3 at equal budget suffix (`specblock@59` vs `eagle3@59`), else the first of each."""
    sb = [m for m in methods if base_name(m) == "specblock"]
    e3 = [m for m in methods if base_name(m) == "eagle3"]
    pairs = [(s, e) for s in sb for e in e3 if s.partition("@")[2] == e.partition("@")[2]]
    return pairs or ([(sb[0], e3[0])] if sb and e3 else [])


def summarise(rows: list[dict], methods: list[str] | None = None, pairs: list[tuple[str, str]] | None = None) -> dict:
    """The whole summary: table[method][category] (plus `all`) and the paired comparisons."""
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in (methods or []) if m in present] + [m for m in present if m not in (methods or [])]
    categories = category_order({r["category"] for r in rows})
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["category"])].append(r)
        groups[(r["method"], "all")].append(r)
    table = {
        m: {c: metrics(groups[(m, c)], groups[("vanilla", c)]) for c in (*categories, "all") if groups[(m, c)]}
        for m in methods
    }
    pairs = default_pairs(methods) if pairs is None else pairs
    return {
        "methods": methods,
        "categories": [*categories, "all"],
        "table": table,
        "comparisons": [compare(rows, a, b) for a, b in pairs if a in present and b in present],
        "turns": "MT-bench turn 2 (asked after the method's own turn-1 answer) is a separate row, pooled with turn 1",
        "suspended_rows": sum(1 for r in rows if r.get("suspended")),  # timed across a stop: should be 0
        "definitions": __doc__.split("Definitions (the same as `specblock generate`):\n", 1)[1].strip(),
    }


def write_summary(out: Path, pairs: list[tuple[str, str]] | None = None, plots: bool = True) -> dict:
    """Read `out/results.jsonl`, write `out/summary.json`, `out/report.md` and (with `plots`) the PNGs."""
    from specblock.bench.report import render_report

    out = Path(out)
    settings = read_settings(out)
    rows = read_rows(out / RESULTS)
    summary = summarise(rows, settings.get("methods"), pairs)
    summary["settings"] = settings
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    figures = []
    if plots and rows:
        from specblock.bench.plots import write_plots

        figures = write_plots(summary, out)
    (out / "report.md").write_text(render_report(summary, figures))
    return summary


def _json_default(value: object) -> object:
    return str(value)
