"""Continuous batching of speculative decoding: one engine thread, up to `max_batch` requests.

Each iteration every active request's drafter proposes its tree, and ONE target forward
verifies all of them (`runner.verify_batch`: the matrix products take every row at once,
each request attends to its own KV cache). Acceptance, commit and the stop checks are per
request (`decoding.RequestDecoder`, the very steps `specblock generate` runs), so a
request's tokens are what it would get alone. Requests join and leave at iteration
boundaries; a newcomer's prefill runs on its own before it joins the batch.

The engine thread owns every model call. Callers talk to it through `submit` (from any
thread) and receive `Event`s through the sink they pass, called on the engine thread.

Which thread that is matters on a CPU: PyTorch's OpenMP pool belongs to the thread that
first computed (the one that loaded the model); a forward issued from another thread gets a
second pool and ran about 15% slower on the 2-core Zen 5 tested. So `specblock serve` runs
the engine on the main thread (`run`) and the HTTP server beside it; `start` (a thread of
its own) is for tests and embedding.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from specblock.decoding import DecodeSettings, DecodeStats, DraftedStep, RequestDecoder, cache_slots_needed
from specblock.drafters.base import Drafter
from specblock.target.runner import TargetRunner, verify_batch
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree


class QueueFullError(Exception):
    """Every batch slot is busy and the waiting queue is full: retry later."""


@dataclass
class Tokens:
    """Tokens one iteration added; the first `drafted` came from the draft tree, the rest
    (at most one) is the target's own token."""

    tokens: list[int]
    drafted: int


@dataclass
class Finished:
    stats: DecodeStats
    batch_sizes: list[int]  # requests verified together, per iteration of this request


@dataclass
class Failed:
    message: str
    kind: str  # "timeout", "shutdown" or "internal"


Event = Tokens | Finished | Failed


@dataclass
class Job:
    """One request as the engine sees it. `cancel()` may be called from any thread."""

    prompt: list[int]
    settings: DecodeSettings
    sink: Callable[[Event], None]
    timeout_s: float
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread at the next iteration boundary


@dataclass
class _Slot:
    """A batch slot: a runner (its KV cache is reused across requests) and a forked drafter."""

    runner: TargetRunner
    drafter: Drafter
    job: Job | None = None
    decoder: RequestDecoder | None = None
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class EngineCounters:
    """What `/metrics` reports, updated by the engine thread (plain ints and floats: each
    update is one assignment, safe to read from another thread)."""

    iterations: int = 0
    verified_rows: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    prefill_s: float = 0.0
    batch_size_sum: int = 0
    cancelled: int = 0  # requests dropped because their clients left


class BatchScheduler:
    def __init__(
        self,
        model: Transformer,
        drafter: Drafter,
        decode: Callable[[list[int]], str],
        max_batch: int = 4,
        queue_size: int = 16,
        slot_capacity: int | None = None,
        batch_budgets: dict[int, int] | None = None,
    ) -> None:
        """`slot_capacity`: KV slots per batch slot (default: the model's context + 64). A request
        needs `decoding.cache_slots_needed`. `batch_budgets` (batch size -> node budget, from
        `budget.batch_budgets`) shrinks each request's tree as the batch grows; a request with a
        sampling seed keeps its own budget, so that its seeded output repeats whatever the load."""
        if max_batch < 1 or queue_size < 0:
            raise ValueError("max_batch must be >= 1 and queue_size >= 0")
        self.model = model
        self.decode = decode
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.capture = drafter.needs_features
        self.slot_capacity = slot_capacity or model.cfg.max_position_embeddings + 64
        caches = model.new_cache_pool(max_batch, self.slot_capacity)  # one pool: batched attention gathers once
        drafters = [drafter.fork() for _ in range(max_batch)]  # the given drafter stays its owner's
        self.slots = [_Slot(TargetRunner(model, cache), d) for cache, d in zip(caches, drafters)]
        self.batch_budgets = batch_budgets
        self.counters = EngineCounters()
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._running = True  # requests may queue before the loop starts; `stop` ends it for good
        self._thread: threading.Thread | None = None

    # -- called from any thread ---------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(slot.job is not None for slot in self.slots)

    def submit(self, job: Job) -> Job:
        """Queue a request; raises QueueFullError when it can neither run nor wait, ValueError when
        it does not fit a batch slot's cache."""
        needed = cache_slots_needed(len(job.prompt), job.settings, self.model.cfg.max_position_embeddings)
        if needed > self.slot_capacity:
            raise ValueError(f"the request needs {needed} cache slots; a batch slot holds {self.slot_capacity}")
        with self._lock:
            if not self._running:
                raise QueueFullError("the server is shutting down")
            free = self.max_batch - self.active
            if len(self._waiting) >= free + self.queue_size:
                raise QueueFullError(f"{self.max_batch} requests running and {self.queue_size} waiting")
            self._waiting.append(job)
            self._lock.notify()
        return job

    def start(self) -> None:
        """Run the engine on a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="specblock-engine", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Run the engine on the calling thread until `stop` (from another thread or a signal handler)."""
        self._loop()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Refuse new requests, cancel the unfinished ones (their clients get a 'shutdown'
        failure), and join the engine thread."""
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the engine thread --------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once the engine loop has ended (stopped, or died of an unexpected error)."""
        return self._running

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while self._running and not self._waiting and self.active == 0:
                        self._lock.wait(timeout=1.0)  # a timeout keeps the main thread responsive to signals
                    if not self._running:
                        break
                self._drop_cancelled()
                self._admit()
                self._iterate()
            reason = Failed("the server shut down before the request finished", "shutdown")
        except Exception as exc:  # noqa: BLE001 - a bug in the loop itself: fail everyone, say why
            reason = Failed(f"the engine stopped: {type(exc).__name__}: {exc}", "internal")
        with self._lock:
            self._running = False
            jobs, self._waiting = list(self._waiting), deque()
        for job in jobs + [s.job for s in self.slots if s.job is not None]:
            _send(job, reason)
        for slot in self.slots:
            slot.job = slot.decoder = None

    def _admit(self) -> None:
        """Move waiting requests into free slots; each one's prefill runs here, alone."""
        for slot in self.slots:
            if slot.job is not None:
                continue
            with self._lock:
                if not self._waiting:
                    return
                slot.job, slot.batch_sizes = self._waiting.popleft(), []  # counted as active at once
            slot.decoder = RequestDecoder(slot.runner, slot.drafter, slot.job.prompt, slot.job.settings, self.decode)
            self._guarded(slot, lambda: self._prefill(slot))

    def _prefill(self, slot: _Slot) -> None:
        first = slot.decoder.prefill()
        self.counters.prefill_s += slot.decoder.stats.prefill_s
        _send(slot.job, Tokens(first, 0))
        if slot.decoder.done:
            self._finish(slot)

    def _iterate(self) -> None:
        """One speculative iteration over every active request: draft, ONE verify, accept."""
        batch: list[tuple[_Slot, DraftedStep]] = []
        active = self.active
        proposed, proposed_s = self._propose_together(active)
        for slot in self.slots:
            if slot.job is None:
                continue
            budget = self._budget(slot.job, active)
            tree = proposed.get(id(slot))
            drafted = self._guarded(slot, lambda: slot.decoder.draft(budget, tree, proposed_s if tree else 0.0))
            if drafted is not None:
                batch.append((slot, drafted))
            elif slot.job is not None:  # draft() returned None: generation ended (context)
                self._finish(slot)
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            steps = verify_batch(
                [s.runner for s, _ in batch], [d.root for _, d in batch], [d.tree for _, d in batch], self.capture
            )
        except Exception as exc:  # noqa: BLE001 - a failed forward fails its requests, not the server
            for slot, _ in batch:
                self._fail(slot, f"verification failed: {type(exc).__name__}: {exc}")
            return
        verify_s = time.perf_counter() - t0
        c = self.counters
        c.target_s += verify_s
        c.iterations += 1
        c.batch_size_sum += len(batch)
        c.verified_rows += sum(len(d.tree) + 1 for _, d in batch)
        for (slot, _), step in zip(batch, steps):
            slot.batch_sizes.append(len(batch))
            self._guarded(slot, lambda: self._accept(slot, step, verify_s))

    def _propose_together(self, active: int) -> tuple[dict[int, DraftTree], float]:
        """Draft the requests whose drafter can batch (`propose_batch`: SpecBlock's block 1) in one
        call; returns their trees by slot and the call's time. Requests with a sampling seed
        draft alone: a batched drafter forward may round differently, and their seeded output
        must repeat whatever the load."""
        slots = [s for s in self.slots if s.job is not None and not _pinned(s.job)]
        propose_batch = getattr(type(slots[0].drafter), "propose_batch", None) if slots else None
        budgets = [s.decoder.proposal_budget(self._budget(s.job, active)) for s in slots]
        chosen = [(s, b) for s, b in zip(slots, budgets) if b > 0]
        if propose_batch is None or len(chosen) < 2:
            return {}, 0.0
        t0 = time.perf_counter()
        try:
            trees = propose_batch([s.drafter for s, _ in chosen], [b for _, b in chosen])
        except Exception as exc:  # noqa: BLE001 - their drafters' state is unknown now: fail just them
            for slot, _ in chosen:
                self._fail(slot, f"batched drafting failed: {type(exc).__name__}: {exc}")
            return {}, 0.0
        return {id(s): tree for (s, _), tree in zip(chosen, trees)}, time.perf_counter() - t0

    def _budget(self, job: Job, active: int) -> int | None:
        if self.batch_budgets is None or _pinned(job):
            return None
        return self.batch_budgets[active]

    def _accept(self, slot: _Slot, step, verify_s: float) -> None:
        decoder = slot.decoder
        new = decoder.accept(step, verify_s)
        self.counters.draft_s += decoder.stats.draft_s[-1]
        _send(slot.job, Tokens(new, decoder.stats.accepted_lengths[-1]))
        if decoder.done:
            self._finish(slot)

    def _drop_cancelled(self) -> None:
        """Free the slots of requests whose clients left or whose time ran out, and drop such
        requests from the queue (an expired one fails without running)."""
        now = time.monotonic()
        for slot in self.slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled:
                slot.job = slot.decoder = None  # the client is gone: nothing to tell it
                self.counters.cancelled += 1
            elif now - job.submitted > job.timeout_s:
                self._fail(slot, f"the request ran past its timeout of {job.timeout_s:g} s", "timeout")
        with self._lock:
            waiting, self._waiting = self._waiting, deque()
            for job in waiting:
                if job.cancelled:
                    self.counters.cancelled += 1
                elif now - job.submitted > job.timeout_s:
                    _send(job, Failed(f"the request waited past its timeout of {job.timeout_s:g} s", "timeout"))
                else:
                    self._waiting.append(job)

    def _guarded(self, slot: _Slot, step: Callable):
        """Run one request's step; an exception fails that request and frees its slot."""
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - isolate one request's failure from the others
            self._fail(slot, f"{type(exc).__name__}: {exc}")
            return None

    def _finish(self, slot: _Slot) -> None:
        job, stats = slot.job, slot.decoder.finish()
        slot.job = slot.decoder = None
        _send(job, Finished(stats, slot.batch_sizes))

    def _fail(self, slot: _Slot, message: str, kind: str = "internal") -> None:
        job, slot.job, slot.decoder = slot.job, None, None
        if job is not None:
            _send(job, Failed(message, kind))


def _pinned(job: Job) -> bool:
    """A seeded sampling request drafts as it would alone (its own budget, its own drafter call)."""
    sampling = job.settings.sampling
    return not sampling.greedy and sampling.seed is not None


def _send(job: Job, event: Event) -> None:
    """Hand an event to the job's sink; a sink that fails (its client's event loop is gone)
    costs that job its events, never the engine."""
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 - the receiver is gone; nothing else to tell it
        job.cancel()
