"""PNG figures for the report: speedup per category, acceptance-length histograms, per-slot acceptance."""

from __future__ import annotations

from pathlib import Path

from specblock.bench.summary import MAX_SLOT


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedup(summary: dict, path: Path) -> None:
    """Grouped bars: speedup over vanilla per category and method, error bars = std over runs."""
    plt = _pyplot()
    methods = [m for m in summary["methods"] if m != "vanilla"]
    cats = summary["categories"]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats) + 2), 3.8))
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(cats))]
        entries = [summary["table"][m].get(c, {}) for c in cats]
        means = [e.get("speedup_mean") or 0.0 for e in entries]
        errs = [e.get("speedup_std") or 0.0 for e in entries]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("speedup vs vanilla (tokens/s ratio)")
    ax.set_title("Speedup per category (mean ± std over runs)")
    if methods:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accept_hist(summary: dict, path: Path) -> None:
    """One panel per drafting method: share of iterations that kept 0, 1, 2, ... draft tokens."""
    plt = _pyplot()
    methods = [m for m in summary["methods"] if m != "vanilla" and "all" in summary["table"][m]]
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(3.2 * max(len(methods), 1), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods):
        hist = summary["table"][m]["all"]["accept_length_hist"]
        total = sum(hist) or 1
        ax.bar(range(len(hist)), [n / total for n in hist])
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("accepted draft tokens")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of iterations")
    fig.suptitle("Acceptance-length histogram (all categories)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slot_acceptance(summary: dict, path: Path) -> None:
    """Per method: fraction of iterations whose accepted length is at least d, d = 1..8."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    depths = list(range(1, MAX_SLOT + 1))
    for m in summary["methods"]:
        entry = summary["table"][m].get("all")
        if m == "vanilla" or entry is None or entry["iterations"] == 0:
            continue
        ax.plot(depths, entry["slot_acceptance"], marker="o", label=m)
    ax.set_xlabel("d (draft position)")
    ax.set_ylabel("iterations with accepted length >= d")
    ax.set_ylim(0, 1)
    ax.set_title("Per-slot acceptance (all categories)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(summary: dict, out: Path) -> list[str]:
    """Write the three PNGs into `out`; returns their file names."""
    out = Path(out)
    figures = {
        "speedup.png": plot_speedup,
        "accept_hist.png": plot_accept_hist,
        "slot_acceptance.png": plot_slot_acceptance,
    }
    for name, plot in figures.items():
        plot(summary, out / name)
    return list(figures)
