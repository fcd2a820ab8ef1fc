"""`specblock profile`: measure the verify latency T(n) and the drafters' latency D(n) that
`--node-budget auto` uses, on this machine."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from specblock.cli.common import err, user_errors
from specblock.errors import InvalidSettingError
from specblock.models.registry import DEFAULT_TARGET

TRAINED_METHODS = ("specblock", "eagle3")


def profile(
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    drafters: Annotated[str, typer.Option(
        help="Drafters to time: 'shipped' (those shipped for the target), 'none', or a comma list of "
        "METHOD or METHOD=DIR (METHOD: specblock | eagle3)."
    )] = "shipped",
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the CPU has AMX or AVX512-BF16, and on CUDA; else float32) | float32 | bfloat16 | float16 | int8 (int8 weights, CPU)")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Also write profile.json and profile.png here.")] = None,
) -> None:  # fmt: skip
    """Measure the target's verify latency for 0..128 draft nodes and the drafters' latency on
    this machine, save them for --node-budget auto, and print the budget auto picks."""
    from specblock.api import SpecGenerator
    from specblock.bench.drafter_latency import measure_draft_latency
    from specblock.budget import auto_budget, drafter_key, expected_tokens_per_s, measure_verify_latency, profile_path, save_profile
    from specblock.drafters.checkpoint import read_config
    from specblock.target.runner import TargetRunner

    with user_errors():
        wanted = _parse_drafters(drafters, str(target))  # bad settings fail before the model loads
        if drafters.strip() == "shipped" and not wanted:
            err.print(f"no drafter ships for {target!r}: timing the target only (give --drafters METHOD=DIR)")
        from dataclasses import asdict

        from specblock.target.cpu import cpu_features
        from specblock.target.kernels import kernel_table

        err.print(f"CPU: {cpu_features().describe()}; measuring the kernel table...", highlight=False)
        table = kernel_table(refresh=True)
        for plan in table.values():
            err.print(f"  {plan.describe()}; {plan.timings_us}", highlight=False)
        gen = SpecGenerator.load(target, "vanilla", dtype=dtype, device=device)
        err.print(f"dtype: {gen.target.dtype_name}", highlight=False)
        err.print("measuring verify latency (a few seconds)...")
        latency = measure_verify_latency(TargetRunner(gen.target))
        one = latency[min(latency)]
        for n, t in latency.items():
            err.print(f"n={n:4d}: {1000 * t:7.1f} ms ({t / one:4.2f}x a one-token forward)", highlight=False)
        path = profile_path(str(target), gen.target.weights_key, str(gen.target.device))
        save_profile(path, str(target), gen.target.kernels, latency)  # kept even if a drafter's timing fails below
        measured: dict[str, dict] = {}
        for method, directory in wanted:
            err.print(f"measuring {method} drafter latency ({directory})...")
            draft = measure_draft_latency(gen, method, directory, str(target))
            calibration = read_config(directory).get("calibration")
            entry: dict = {"method": method, "drafter": str(directory.resolve()), "draft_s": draft}
            for n, t in draft.items():
                err.print(f"  n={n:4d}: drafting {1000 * t:7.1f} ms per iteration", highlight=False)
            if calibration:
                speed = expected_tokens_per_s(latency, calibration, draft)
                entry["expected_tokens_per_s"] = speed
                entry["auto_budget"] = auto_budget(latency, calibration, draft_s=draft)
                err.print(f"  auto budget: {entry['auto_budget']} draft nodes "
                          f"({speed[entry['auto_budget']]:.1f} expected tokens/s; plain decoding {speed[0]:.1f})")  # fmt: skip
            else:
                err.print("  (no calibration in its config.json: auto cannot weigh this drafter's tau)")
            key = drafter_key(method, directory)
            measured[key] = entry
            save_profile(path, str(target), gen.target.kernels, latency, {key: draft})
        err.print(f"saved to {path} (used by --node-budget auto)")
        if out is not None:
            from specblock.bench.machine import machine_description

            out.mkdir(parents=True, exist_ok=True)
            record = {
                "target": str(target), "verify_s": latency, "drafters": list(measured.values()),
                "command": "specblock " + " ".join(sys.argv[1:]),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_description(str(gen.target.device)), "cpu": cpu_features().key(),
                "dtype": gen.target.dtype_name,
                "kernel_table": {name: asdict(plan) for name, plan in table.items()},
            }  # fmt: skip
            (out / "profile.json").write_text(json.dumps(record, indent=2) + "\n")
            _plot(latency, list(measured.values()), out / "profile.png", str(target))


def _parse_drafters(spec: str, target: str) -> list[tuple[str, Path]]:
    """(method, checkpoint directory) pairs from the --drafters option."""
    from specblock.drafters.shipped import shipped_drafter

    spec = spec.strip()
    if spec == "none":
        return []
    if spec == "shipped":
        return [(m, d) for m in TRAINED_METHODS if (d := shipped_drafter(target, m)) is not None]
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        method, _, directory = item.partition("=")
        if method not in TRAINED_METHODS:
            raise InvalidSettingError(f"--drafters: {method!r} is not a trained drafter method ({', '.join(TRAINED_METHODS)})")
        path = Path(directory) if directory else shipped_drafter(target, method)
        if path is None:
            raise InvalidSettingError(f"--drafters: no {method} drafter ships for {target!r}; give {method}=DIR")
        if not (path / "config.json").is_file():
            raise InvalidSettingError(f"--drafters: {path} is not a drafter checkpoint (no config.json)")
        pairs.append((method, path))
    return pairs


def _plot(latency: dict[int, float], drafters: list[dict], path: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from specblock.budget import interpolate

    xs = sorted(latency)
    with_speed = [d for d in drafters if "expected_tokens_per_s" in d]
    fig, axes = plt.subplots(1, 2 if with_speed else 1, figsize=(11 if with_speed else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(xs, [1000 * latency[n] for n in xs], marker="o", label="verify T(n)")
    for d in drafters:
        draft = {int(n): t for n, t in d["draft_s"].items()}
        ax.plot(xs, [1000 * (latency[n] + (interpolate(draft, n) if n else 0.0)) for n in xs], marker=".",
                label=f"T(n) + {d['method']} drafting D(n)")  # fmt: skip
    ax.set_xlabel("draft nodes n (root excluded)")
    ax.set_ylabel("ms per iteration")
    ax.set_title(f"latency per iteration, {target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if with_speed:
        ax = axes[0][1]
        for d in with_speed:
            speed = {int(n): s for n, s in d["expected_tokens_per_s"].items()}
            ns = sorted(speed)
            ax.plot(ns, [speed[n] for n in ns], marker=".", label=f"{d['method']} (auto: {d['auto_budget']})")
        ax.axhline(1 / latency[min(latency)], color="grey", linestyle="--", label="plain decoding")
        ax.set_xlabel("draft nodes n")
        ax.set_ylabel("expected tokens/s = tau(n) / (T(n) + D(n))")
        ax.set_title("what --node-budget auto maximises")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
