"""Write ablations.md for a `benchmarks/ablations.sh` run: what each SpecBlock mechanism is
worth against the full-SpecBlock control trained alike (design §9, issue 4 item 2).

    .venv/bin/python benchmarks/ablation_report.py --bench benchmarks/results/ablations_smollm2-135m --runs RUNS

Per variant: tau and tokens/s (all categories), their change against the control, the
drafting cost, the held-out chain tau from training, tau per category, and two paired
tests over questions against the control: Wilcoxon on the per-question tau difference
(the mechanism's effect on acceptance, free of timing noise) and on the log tokens/s ratio.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from specblock.bench.results import read_rows
from specblock.bench.stats import wilcoxon_signed_rank
from specblock.bench.summary import compare

VARIANTS = {
    "control": "full SpecBlock (control)",
    "noshift": "no layer-wise shift",
    "shiftslot0": "the design's shift (slot 0 projected too)",
    "oneblock": "no inheritance (one block, M=1)",
    "fixedtopk": "fixed top-4 instead of the rank head",
    "novalidprefix": "no valid-prefix mask",
    "floor0_1": "slot loss over valid positions / max(valid, 0.1 x trainable)",
}


def per_question_tau(rows: list[dict]) -> dict[str, float]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[json.dumps(r["question_id"])].append(r)
    return {q: sum(r["new_tokens"] for r in rs) / sum(r["iterations"] for r in rs) for q, rs in groups.items()}


def training_summary(runs: Path, name: str) -> dict:
    """The held-out figures the trainer wrote for a variant's drafter (the fixed top-k variant
    shares the control's weights): the run's summary.json for a finished run's OUT/drafter,
    else the train_log.jsonl entry of a snapshot's step (`runs/drafters.json` says which)."""
    name = "control" if name == "fixedtopk" else name
    listed = runs / "drafters.json"
    drafter = Path(json.loads(listed.read_text())[name]) if listed.exists() else runs / name / "drafter"
    if drafter.name == "drafter":
        path = drafter.parent / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}
    step = int(drafter.name.split("-")[1])  # OUT/snapshots/step-N
    log = drafter.parent.parent / "train_log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return next((e for e in entries if e["step"] == step and "chain_tau4" in e), {})


def _f(x: float | None, digits: int = 2, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _delta(x: float | None, base: float | None) -> str:
    """x - base, signed; "-" where either is missing (a variant whose rows all stopped has no timings)."""
    return "-" if x is None or base is None else _f(x - base, sign=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, required=True, help="the ablation benchmark's output directory")
    ap.add_argument("--runs", type=Path, required=True, help="the ablation drafters' training directories")
    args = ap.parse_args()
    summary = json.loads((args.bench / "summary.json").read_text())
    rows = read_rows(args.bench / "results.jsonl")
    settings = summary["settings"]
    methods = [m for m in summary["methods"] if m.startswith("specblock:")]
    name_of = {m: m.split(":", 1)[1].split("@", 1)[0] for m in methods}
    control = next(m for m in methods if name_of[m] == "control")
    table, cats = summary["table"], [c for c in summary["categories"] if c != "all"]
    tau_q = {m: per_question_tau([r for r in rows if r["method"] == m]) for m in methods}
    out = [
        f"# SpecBlock ablations, {settings['target']}",
        "",
        f"Each drafter trained on the same data, schedule and steps; benchmark: {settings['per_category']} "
        f"questions per category, {settings['max_new_tokens']} new tokens, T={settings['temperature']}, "
        f"{settings['runs']} run(s), node budget {control.rsplit('@', 1)[1]}. Tests are paired over questions against the control.",
        "",
        "| variant | tau | Δtau | p (tau) | tokens/s | speedup | Δspeedup | p (tokens/s) | drafter fwd / ms per it. | held-out chain tau | = vanilla |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    base = table[control]["all"]
    for m in methods:
        e, name = table[m]["all"], name_of[m]
        trained = training_summary(args.runs, name)
        if m == control:
            p_tau = p_tps = "-"
        else:
            common = sorted(set(tau_q[m]) & set(tau_q[control]))
            p_tau = _f(wilcoxon_signed_rank([tau_q[m][q] - tau_q[control][q] for q in common])["p_value"], 3)
            paired = compare(rows, m, control)
            p_tps = _f(paired["wilcoxon"]["p_value"], 3) if paired["pairs"] else "-"
        out.append(
            f"| {VARIANTS.get(name, name)} | {_f(e['tau'])} | {_delta(e['tau'], base['tau']) if m != control else '-'} | {p_tau} "
            f"| {_f(e['tokens_per_s'])} | {_f(e['speedup_mean'])}{'x' if e['speedup_mean'] is not None else ''} | {_delta(e['speedup_mean'], base['speedup_mean']) if m != control else '-'} "
            f"| {p_tps} | {_f(e['drafter_forwards_per_iteration'])} / {_f(e['draft_ms_per_iteration'], 1)} "
            f"| {_f(trained.get('chain_tau4'), 3)} | {e['equal_to_vanilla_count']} |"
        )  # fmt: skip
    out += ["", "Tau per category:", "", "| variant | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for m in methods:
        out.append(f"| {VARIANTS.get(name_of[m], name_of[m])} | " + " | ".join(_f(table[m][c]["tau"]) for c in cats) + " |")
    vanilla = table.get("vanilla", {}).get("all")
    if vanilla:
        out += ["", f"Vanilla in the same run: {_f(vanilla['tokens_per_s'])} tokens/s."]
    (args.bench / "ablations.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
