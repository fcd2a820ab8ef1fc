"""Server metrics in Prometheus' text exposition format (written by hand: no extra dependency)."""

from __future__ import annotations

import threading
from collections import Counter

from specblock.serving.scheduler import BatchScheduler

TAU_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0)


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by outcome
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.tau_counts = [0] * (len(TAU_BUCKETS) + 1)  # the last bucket is +Inf
        self.tau_sum = 0.0

    def record(self, outcome: str, prompt_tokens: int = 0, generated_tokens: int = 0, tau: float | None = None) -> None:
        with self._lock:
            self.requests[outcome] += 1
            self.prompt_tokens += prompt_tokens
            self.generated_tokens += generated_tokens
            if tau is not None:
                index = next((i for i, edge in enumerate(TAU_BUCKETS) if tau <= edge), len(TAU_BUCKETS))
                self.tau_counts[index] += 1
                self.tau_sum += tau

    def render(self, scheduler: BatchScheduler) -> str:
        c = scheduler.counters
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            outcomes = ("completed", "cancelled", "failed", "timeout", "rejected")
            metric("specblock_requests_total", "counter", "Requests by outcome.",
                   [(f'{{outcome="{o}"}}', self.requests[o]) for o in outcomes])  # fmt: skip
            metric("specblock_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", [("", self.prompt_tokens)])
            metric("specblock_generated_tokens_total", "counter", "Tokens generated for finished requests.",
                   [("", self.generated_tokens)])  # fmt: skip
            cumulative, samples = 0, []
            for edge, count in zip((*TAU_BUCKETS, float("inf")), self.tau_counts):
                cumulative += count
                samples.append((f'_bucket{{le="{"+Inf" if edge == float("inf") else f"{edge:g}"}"}}', cumulative))
            samples += [("_sum", self.tau_sum), ("_count", cumulative)]
            metric("specblock_tau", "histogram", "Tokens per target forward of each completed request.", samples)
        metric("specblock_drafter_seconds_total", "counter", "Drafter time (propose + observe).", [("", c.draft_s)])
        metric("specblock_target_seconds_total", "counter", "Batched verification forwards.", [("", c.target_s)])
        metric("specblock_prefill_seconds_total", "counter", "Prompt prefills.", [("", c.prefill_s)])
        metric("specblock_iterations_total", "counter", "Batched verification forwards run.", [("", c.iterations)])
        metric("specblock_batched_requests_total", "counter", "Requests verified, summed over iterations.",
               [("", c.batch_size_sum)])  # fmt: skip
        metric("specblock_verified_rows_total", "counter", "Target rows verified (roots and draft nodes).",
               [("", c.verified_rows)])  # fmt: skip
        metric("specblock_queue_depth", "gauge", "Requests waiting for a batch slot.", [("", scheduler.queue_depth)])
        metric("specblock_active_requests", "gauge", "Requests in the batch.", [("", scheduler.active)])
        return "\n".join(lines) + "\n"
