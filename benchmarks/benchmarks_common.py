"""Helpers shared by the benchmark scripts (the machine description now lives in the package)."""

from __future__ import annotations

import datetime
import sys

from specblock.bench.machine import machine_description

__all__ = ["machine_description", "run_header"]


def run_header() -> dict:
    """What every result file starts with: the command, the UTC date, the machine and its CPU."""
    from specblock.target.kernels import cpu_features

    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "cpu": cpu_features().key(),
    }
