"""What this CPU is: its model, the instruction sets that decide the kernels, and its generation.

Every cached measurement (the kernel table, verify profiles) and every benchmark file is filed
under `CpuFeatures.key`, since this project's machines vary (an AVX2-only EPYC, Zen 5 EPYCs
with AVX512-BF16, an AMX Xeon) and a timing or a bit-exactness check from one must not pass
for another's. The fastest dtype (`auto_dtype`) and the thread count follow from it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    amx_bf16: bool
    avx512_bf16: bool
    avx512: bool
    avx2: bool
    # family / model / stepping: KVM guests of different CPU generations can share one model
    # name ("AMD EPYC"), and timings or bit-exactness measured on one must not pass for another's
    generation: str = ""

    @property
    def fast_bf16(self) -> bool:
        """Native bf16 dot products (AMX tiles or AVX512-BF16): bf16 beats fp32 here."""
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        isa = [name for name, on in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16),
                                     ("AVX-512", self.avx512), ("AVX2", self.avx2)) if on]  # fmt: skip
        return f"{self.model} ({', '.join(isa) or 'no AVX2'})"

    def key(self) -> str:
        """What a cached measurement (kernel table, verify profile) is filed under."""
        return f"{self.describe()} [{self.generation or 'generation unknown'}]"


# what tells CPU generations apart: x86's family/model/stepping, ARM's implementer/part/variant/revision
GENERATION_FIELDS = ("cpu family", "model", "stepping", "CPU implementer", "CPU part", "CPU variant", "CPU revision")


def parse_cpuinfo(text: str, fallback_model: str = "") -> CpuFeatures:
    """The first processor's model name, instruction sets and generation in /proc/cpuinfo text."""
    model, flags, fields = "", set(), {}
    for line in text.splitlines():
        name, _, value = (part.strip() for part in line.partition(":"))
        if name == "model name" and not model:
            model = value
        elif name in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif name in GENERATION_FIELDS and name not in fields:
            fields[name] = value
    generation = " ".join(f"{name} {value}" for name, value in fields.items())
    return CpuFeatures(model or fallback_model, "amx_bf16" in flags, "avx512_bf16" in flags, "avx512f" in flags,
                       "avx2" in flags, generation)  # fmt: skip


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """The CPU model and the instruction sets that decide the kernels (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.processor() or platform.machine())


def auto_dtype(device: str) -> torch.dtype:
    """The fastest dtype here: bf16 on CUDA and on CPUs with AMX or AVX512-BF16, else fp32."""
    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_features().fast_bf16 else torch.float32


def compute_threads() -> int:
    """Threads for compute: OMP_NUM_THREADS when the user set it, else the CPUs this process may
    run on. The kernel table is measured with this many and the pool is set to it."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
