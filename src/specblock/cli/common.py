"""Pieces every CLI module shares: one-line user errors and a rich progress bar."""

from __future__ import annotations

import time
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from specblock.errors import SpecBlockError

err = Console(stderr=True, soft_wrap=True)  # one message = one line, whatever the terminal width


@contextmanager
def user_errors():
    """Print a SpecBlockError as one line and exit 1 instead of a traceback."""
    try:
        yield
    except SpecBlockError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@contextmanager
def progress_reporter(log_every_s: float = 60.0):
    """A rich progress bar fed by (stage, done, total[, info]) reports. When stderr is not a
    terminal (a job under nohup), it prints a plain line per stage every `log_every_s` instead."""
    labels = {
        "download": "downloading wheels", "verify": "joining + sha256", "convert": "converting tensors",
        "prepare": "target features", "regen": "regenerating answers", "train": "training",
    }
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err, transient=False, disable=not err.is_terminal,
    ) as progress:  # fmt: skip
        tasks: dict[str, int] = {}
        printed: dict[str, float] = {}

        def report(stage: str, done: int, total: int, info: str = "") -> None:
            """`info`: a running figure shown after the bar (e.g. tokens/s)."""
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total, info="")
            progress.update(tasks[stage], completed=done, total=total, info=info)
            now = time.monotonic()
            if not err.is_terminal and (now - printed.get(stage, -1e9) >= log_every_s or done == total):
                printed[stage] = now
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                err.print(f"{stamp} {labels.get(stage, stage)}: {done}/{total} {info}".rstrip(), highlight=False)

        yield report
