"""Helpers shared by the benchmark scripts (the machine description now lives in the package)."""

from __future__ import annotations

from specblock.bench.machine import machine_description

__all__ = ["machine_description"]
