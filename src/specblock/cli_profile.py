"""`specblock profile`: measure the verify-latency profile T(n) that `--node-budget auto` uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from specblock.cli_common import err, user_errors
from specblock.models.registry import DEFAULT_TARGET


def profile(
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Also write profile.json and profile.png here.")] = None,
) -> None:
    """Measure the target's verify latency for 1..128 draft nodes on this machine and save it."""
    from specblock.api import SpecGenerator
    from specblock.budget import measure_verify_latency, profile_path, save_profile
    from specblock.target.runner import TargetRunner

    with user_errors():
        gen = SpecGenerator.load(target, "vanilla", dtype=dtype, device=device)
        err.print("measuring verify latency (a few seconds)...")
        latency = measure_verify_latency(TargetRunner(gen.target))
        path = profile_path(str(target), gen.target.dtype, str(gen.target.device))
        save_profile(path, str(target), latency)
        one = latency[min(latency)]
        for n, t in latency.items():
            err.print(f"n={n:4d}: {1000 * t:7.1f} ms ({t / one:4.2f}x a one-token forward)", highlight=False)
        err.print(f"saved to {path} (used by --node-budget auto)")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "profile.json").write_text(json.dumps({"target": str(target), "verify_s": latency}, indent=2) + "\n")
            _plot(latency, out / "profile.png", str(target))


def _plot(latency: dict[int, float], path: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(latency)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, [1000 * latency[n] for n in xs], marker="o")
    ax.set_xlabel("draft nodes n (root excluded)")
    ax.set_ylabel("verify forward, ms")
    ax.set_title(f"T(n) for {target}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
