"""`python -m specblock.cli ...` runs the CLI (the `specblock` command without the entry point)."""

from specblock.cli import app

app()
