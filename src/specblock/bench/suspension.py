"""Notice when the benchmark process was stopped while it timed a row.

Long benchmarks share a 2-core machine with other work that is paused for them, and the other
way round: `kill -STOP` lends the CPU to a test run, `kill -CONT` gives it back. Wall-clock
timers keep counting while a process is stopped, so a row timed across a stop would carry the
pause in its `wall_s` and look slower than it was. A daemon thread that wakes every `tick`
seconds sees such a stop as a gap far longer than its tick; the runner measures that row again.
"""

from __future__ import annotations

import threading
import time


class SuspensionWatch:
    def __init__(self, tick: float = 0.2, gap: float = 2.0) -> None:
        self.tick, self.gap = tick, gap
        self._last = time.monotonic()  # the ticker's last wake-up
        self._stops = 0  # gaps the ticker has seen
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="suspension-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.tick):
            now = time.monotonic()
            if now - self._last > self.gap:
                self._stops += 1
            self._last = now

    def mark(self) -> int:
        """A mark to pass to `stopped_since` when the timing starts. After a stop the ticker
        first catches up, so a stop between two timings is not charged to the next one."""
        while time.monotonic() - self._last > self.gap and self._thread.is_alive():
            time.sleep(self.tick)
        return self._stops

    def stopped_since(self, mark: int) -> bool:
        """Whether the process was stopped since `mark`: a gap the ticker has seen, or one it
        has not yet woken up to see (it was stopped too, and the main thread ran first)."""
        lag = time.monotonic() - self._last  # before the count: the ticker writes the count first
        return lag > self.gap or self._stops != mark

    def close(self) -> None:
        self._done.set()
        self._thread.join()
