"""A training run's checkpoint lookup and log trimming, on hand-made folders (the kills
mid-save, with real training, are in test_train_distributed.py)."""

from __future__ import annotations

import json

import pytest

from specblock.errors import SpecBlockError
from specblock.training.train_state import checkpoint_dir, drop_log_after


def test_resume_looks_for_a_whole_checkpoint_under_each_name_in_turn(tmp_path):
    def whole(name: str, step: int) -> None:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))

    assert checkpoint_dir(tmp_path) is None
    (tmp_path / "checkpoint.tmp").mkdir()  # a save killed before it wrote state.json, its last file
    assert checkpoint_dir(tmp_path) is None
    whole("checkpoint.tmp", 6)  # an older version's save, killed after it deleted `checkpoint`
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint.tmp"
    whole("checkpoint.old", 2)  # killed between swap_in's renames
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint.old"
    whole("checkpoint", 4)  # killed before the stale .old was deleted
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint"


def test_a_resumed_run_drops_later_log_lines_and_a_half_written_last_one(tmp_path):
    log = tmp_path / "train_log.jsonl"
    drop_log_after(log, 3)  # no log yet: nothing to do
    assert not log.exists()
    lines = [json.dumps({"step": n, "loss": 1.0}) for n in (1, 2, 3, 4)]
    log.write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')  # killed while writing step 5
    drop_log_after(log, 3)
    assert log.read_text() == "\n".join(lines[:3]) + "\n"
    log.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")  # damage before the end is not a kill's
    with pytest.raises(SpecBlockError, match="train_log.jsonl:2"):
        drop_log_after(log, 3)
