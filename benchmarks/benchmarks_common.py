"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine_description() -> str:
    """CPU model, thread count, OS and torch version: written next to every figure."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}, torch {torch.__version__}"
