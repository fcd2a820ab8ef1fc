"""A benchmark row timed while the process was stopped (`kill -STOP`, to lend the CPU) is
measured again: the watch sees a real SIGSTOP, and the runner redoes what it flags."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from specblock.bench import runner
from specblock.bench.results import read_rows
from specblock.bench.summary import write_summary
from specblock.bench.suspension import SuspensionWatch

CHILD = textwrap.dedent("""
    import time
    from specblock.bench.suspension import SuspensionWatch
    watch = SuspensionWatch(tick=0.05, gap=1.0)
    print("ready", flush=True)
    mark = watch.mark()
    time.sleep(4.0)  # stopped from the parent during this sleep
    across = watch.stopped_since(mark)
    mark = watch.mark()
    time.sleep(1.5)  # left alone
    print(across, watch.stopped_since(mark), flush=True)
""")


def test_the_watch_sees_a_stop_of_its_process_and_nothing_else():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert out.split() == ["True", "False"]


def test_a_stop_the_ticker_has_not_woken_up_to_is_seen_too():
    watch = SuspensionWatch(tick=60.0, gap=0.3)  # the ticker sleeps through the whole test
    mark = watch.mark()
    assert not watch.stopped_since(mark)
    time.sleep(0.5)  # as if stopped: the main thread runs on before the ticker
    assert watch.stopped_since(mark)
    watch.close()


class StoppedDuringTheFirst:
    """A watch that reports a stop during the first `n` timings."""

    def __init__(self, n: int) -> None:
        self.left, self.timings = n, 0

    def mark(self) -> int:
        return 0

    def stopped_since(self, mark: int) -> bool:
        self.timings += 1
        self.left -= 1
        return self.left >= 0

    def close(self) -> None:
        pass


def test_a_row_that_must_not_run_twice_is_kept_and_flagged():
    calls = []
    result, stopped = runner.measured(StoppedDuringTheFirst(1), lambda: calls.append(1) or len(calls), again=False)
    assert (result, stopped, len(calls)) == (1, True, 1)  # an adaptive drafter learned from the first try
    result, stopped = runner.measured(StoppedDuringTheFirst(1), lambda: calls.append(1) or len(calls))
    assert (result, stopped, len(calls)) == (3, False, 3)


@pytest.fixture()
def one_question(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["Name a colour."]}) + "\n")
    return path


@pytest.mark.parametrize("stops, timings, flagged", [(1, 3, 0), (100, 2 * runner.MAX_ATTEMPTS, 2)])
def test_the_runner_measures_a_stopped_row_again(tiny_llama, one_question, tmp_path, monkeypatch, stops, timings, flagged):
    watch = StoppedDuringTheFirst(stops)
    monkeypatch.setattr(runner, "SuspensionWatch", lambda: watch)
    out = tmp_path / "bench"
    runner.run_bench(str(tiny_llama), "vanilla,lookup@4", one_question, per_category=1, max_new_tokens=8, out=out,
                     dtype="float32")  # fmt: skip
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 2 and watch.timings == timings  # one stop: the first row twice; always: each row 3 times
    assert sum(1 for r in rows if r.get("suspended")) == flagged  # kept, but flagged, when every try was stopped
    summary = write_summary(out, plots=False)
    assert summary["suspended_rows"] == flagged
    assert ("timed across a stop" in (out / "report.md").read_text()) == bool(flagged)
