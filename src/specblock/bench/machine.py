"""A one-line description of the machine, written next to every figure."""

from __future__ import annotations

import platform

import torch


def machine_description(device: str = "cpu") -> str:
    """CPU model and generation, thread count, OS and torch version (and the GPU when `device` is CUDA)."""
    from specblock.target.cpu import cpu_features

    text = f"{cpu_features().key()}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text
