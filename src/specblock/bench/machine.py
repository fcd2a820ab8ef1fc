"""A one-line description of the machine, written next to every figure."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(device: str = "cpu") -> str:
    """CPU model, thread count, OS and torch version (and the GPU when `device` is CUDA)."""
    text = f"{cpu_name()}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text
