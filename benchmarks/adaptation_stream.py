"""Online adaptation on a stream of requests (issue 5 experiments, design §8).

One process serves a stream of prompts from one category with one generator per policy
(`never` = the frozen drafter, `bandit`, `always` = update the whole drafter every window),
each starting from the same drafter weights and keeping its own adapted copy. The policies
are interleaved: every prompt is answered by each policy back to back, so slow drift of the
machine hits them alike. Vanilla runs first on every prompt (once), as the speed reference
and for the greedy output check. Every request's wall time includes the updates and the
bandit's bookkeeping.

    .venv/bin/python benchmarks/adaptation_stream.py --method specblock --category translation \
        --skip 5 --prompts 24 --max-new-tokens 128 --runs 1 --out benchmarks/results/adapt_translation

Writes OUT/results.jsonl (one row per request), OUT/summary.json, OUT/report.md and
OUT/tau_over_time.png. Resumable per run: a finished run is kept, an interrupted one is
measured again from its start (adapted weights are not saved between processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path

import specblock  # noqa: F401  (sets the OpenMP wait policy before torch loads)

from specblock import SpecGenerator
from specblock.adapt.drafter import AdaptSettings
from specblock.bench.machine import machine_description
from specblock.bench.prompts import read_questions
from specblock.bench.stats import wilcoxon_signed_rank

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
POLICIES = ("never", "bandit", "always")


def stream_prompts(category: str, skip: int, count: int) -> list[str]:
    """Turn-1 questions of one Spec-Bench report category, after the first `skip` (the bench's)."""
    qs = [q for q in read_questions(SHARED / "eval/spec_bench_question.jsonl") if q.category == category]
    picked = qs[skip : skip + count]
    if len(picked) < count:
        raise SystemExit(f"only {len(picked)} {category} questions after the first {skip}")
    return [q.turns[0] for q in picked]


def adapt_settings(args: argparse.Namespace, policy: str = "bandit") -> AdaptSettings:
    return AdaptSettings(policy=policy, window_tokens=args.window, horizon_windows=args.horizon_windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="specblock")
    ap.add_argument("--drafter", default=None, help="checkpoint directory (default: the shipped one)")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--category", required=True)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--node-budget", default="auto")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--horizon-windows", type=float, default=AdaptSettings.horizon_windows, help="windows an update's gain is credited over")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    policies = args.policies.split(",")
    finished = {(r["run"], r["policy"]) for r in rows if r.get("last")}
    done = {run for run in range(1, args.runs + 1) if all((run, p) in finished for p in policies)}
    rows = [r for r in rows if r["policy"] == "vanilla" or r["run"] in done]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = stream_prompts(args.category, args.skip, args.prompts)
    base = SpecGenerator.load(args.target, method="vanilla")
    base.generate("Say hello.", max_new_tokens=8)
    reference = {r["index"]: r for r in rows if r["policy"] == "vanilla"}
    with results.open("a") as f:
        for i, p in enumerate(prompts):
            if i not in reference:
                r = base.generate(p, max_new_tokens=args.max_new_tokens)
                reference[i] = {"policy": "vanilla", "run": 0, "index": i, "tokens_per_s": r.tokens_per_s, "token_ids": r.token_ids}
                f.write(json.dumps(reference[i]) + "\n")
                f.flush()
        for run in range(1, args.runs + 1):
            if run in done:
                continue
            gens, adaptive = {}, {}
            for policy in policies:
                gens[policy] = base.with_method(args.method, node_budget=args.node_budget, drafter=args.drafter, target_name=args.target)
                adaptive[policy] = gens[policy].enable_adaptation(adapt_settings(args, policy))
                gens[policy].generate("Say hello.", max_new_tokens=8)
            seen = dict.fromkeys(policies, 0)
            for i, p in enumerate(prompts):
                for policy in policies:
                    a = adaptive[policy]
                    before_update, before_book = a.update_s, a.bookkeeping_s
                    r = gens[policy].generate(p, max_new_tokens=args.max_new_tokens)
                    events = a.events[seen[policy]:]
                    seen[policy] = len(a.events)
                    row = {
                        "policy": policy, "run": run, "index": i, "new_tokens": r.new_tokens, "iterations": r.iterations,
                        "tau": r.tau, "wall_s": r.wall_s, "tokens_per_s": r.tokens_per_s,
                        "speedup": r.tokens_per_s / reference[i]["tokens_per_s"],
                        "update_s": a.update_s - before_update, "bookkeeping_s": a.bookkeeping_s - before_book,
                        "arms": [e["arm"] for e in events], "equal_to_vanilla": r.token_ids == reference[i]["token_ids"],
                        "node_budget": gens[policy].node_budget, "last": i == len(prompts) - 1,
                    }  # fmt: skip
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"run {run} {policy} #{i}: tau {r.tau:.2f} {r.tokens_per_s:.1f} tok/s arms {row['arms']}", flush=True)
            for policy in policies:
                (args.out / f"events_run{run}_{policy}.json").write_text(json.dumps(adaptive[policy].events, indent=1) + "\n")
    summarise(args)


def summarise(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines()]
    runs = [r for r in rows if r["policy"] != "vanilla"]
    n = args.prompts
    half = n // 2
    summary: dict = {"policies": {}}
    for policy in args.policies.split(","):
        mine = [r for r in runs if r["policy"] == policy]
        if not mine:
            continue
        wall = sum(r["wall_s"] for r in mine)
        tokens = sum(r["new_tokens"] for r in mine)
        late = [r for r in mine if r["index"] >= half]
        summary["policies"][policy] = {
            "tau": round(statistics.mean(r["tau"] for r in mine), 3),
            "tau_second_half": round(statistics.mean(r["tau"] for r in late), 3),
            "tokens_per_s": round(tokens / wall, 2),
            "tokens_per_s_second_half": round(sum(r["new_tokens"] for r in late) / sum(r["wall_s"] for r in late), 2),
            "speedup_mean": round(statistics.mean(r["speedup"] for r in mine), 3),
            "update_share": round(sum(r["update_s"] for r in mine) / wall, 4),
            "bookkeeping_share": round(sum(r["bookkeeping_s"] for r in mine) / wall, 4),
            "updates": sum(1 for r in mine for a in r["arms"] if a != "skip"),
            "windows": sum(len(r["arms"]) for r in mine),
            "all_equal_to_vanilla": all(r["equal_to_vanilla"] for r in mine),
        }  # fmt: skip
    frozen = {(r["run"], r["index"]): r["speedup"] for r in runs if r["policy"] == "never"}
    for policy in summary["policies"]:
        if policy == "never":
            continue
        pairs = [(r["speedup"], frozen[(r["run"], r["index"])]) for r in runs if r["policy"] == policy and (r["run"], r["index"]) in frozen]
        if len(pairs) >= 6:
            test = wilcoxon_signed_rank([a - b for a, b in pairs])
            summary["policies"][policy]["wilcoxon_vs_frozen_p"] = round(test["p_value"], 4)
    summary["settings"] = vars(args) | {"out": str(args.out), "command": "python " + " ".join(sys.argv),
                                        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                        "machine": machine_description("cpu"),
                                        "adaptation": dataclasses.asdict(adapt_settings(args))}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Online adaptation: {args.method} on a {args.category} stream", "",
             f"`{summary['settings']['command']}`", "", f"{summary['settings']['date']}; {summary['settings']['machine']}", "",
             "| policy | tau | tau, 2nd half | tokens/s | tokens/s, 2nd half | speedup vs vanilla | updates / windows | update share | bookkeeping share | p vs frozen | = vanilla |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for policy, s in summary["policies"].items():
        lines.append(
            f"| {policy} | {s['tau']:.2f} | {s['tau_second_half']:.2f} | {s['tokens_per_s']:.1f} | "
            f"{s['tokens_per_s_second_half']:.1f} | {s['speedup_mean']:.2f}x | {s['updates']} / {s['windows']} | "
            f"{100 * s['update_share']:.1f}% | {100 * s['bookkeeping_share']:.2f}% | {s.get('wilcoxon_vs_frozen_p', '-')} | "
            f"{s['all_equal_to_vanilla']} |"
        )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    plot(runs, args)


def plot(runs: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for policy in args.policies.split(","):
        mine = sorted((r for r in runs if r["policy"] == policy), key=lambda r: r["index"])
        if not mine:
            continue
        by_index: dict[int, list[dict]] = {}
        for r in mine:
            by_index.setdefault(r["index"], []).append(r)
        xs = sorted(by_index)
        ax[0].plot(xs, [statistics.mean(r["tau"] for r in by_index[i]) for i in xs], label=policy)
        ax[1].plot(xs, [statistics.mean(r["tokens_per_s"] for r in by_index[i]) for i in xs], label=policy)
    ax[0].set(xlabel="request", ylabel="tau", title=f"{args.category} stream")
    ax[1].set(xlabel="request", ylabel="tokens/s (updates included)")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(args.out / "tau_over_time.png", dpi=100)


if __name__ == "__main__":
    main()
