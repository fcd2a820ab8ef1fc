"""A trained drafter's drafting latency D(n) on this machine, measured inside real generation.

Drafting time per iteration is not a function of the tree size alone: each iteration the
drafter also runs the context positions the target just accepted (about tau of them), so
it is measured where it happens, in greedy generation on a fixed prompt, not on a
synthetic call.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from specblock.api import SpecGenerator
from specblock.errors import SpecBlockError

DRAFT_SIZES = (1, 2, 4, 8, 16, 32, 59, 128)
PROFILE_PROMPT = "Explain how a hash table works, then give a short example in Python."


def measure_draft_latency(
    base: SpecGenerator, method: str, drafter_dir: str | Path, target_name: str,
    sizes: tuple[int, ...] = DRAFT_SIZES, max_new_tokens: int = 32,
) -> dict[int, float]:  # fmt: skip
    """Median drafter seconds per iteration (propose + observe) at each node budget.

    The first iteration is left out: it runs the whole prompt through the drafter, a
    prefill cost that long generations amortise. The median keeps one slow iteration (a
    page fault, a scheduler hiccup) from setting the budget.
    """
    gen = base.with_method(method, node_budget=sizes[0], drafter=drafter_dir, target_name=target_name)
    gen.generate(PROFILE_PROMPT, max_new_tokens=4)  # warm-up
    out: dict[int, float] = {}
    for n in sizes:
        gen.node_budget = n
        result = gen.generate(PROFILE_PROMPT, max_new_tokens=max_new_tokens)
        steady = result.draft_ms[1:]
        if not steady:
            raise SpecBlockError(f"the profile prompt stopped after {result.new_tokens} token(s): no drafting iteration to time")
        out[n] = statistics.median(steady) / 1000
    return out
