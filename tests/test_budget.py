"""The `auto` node budget: expected tokens/s from a latency profile and a drafter calibration."""

import json

import pytest

from typer.testing import CliRunner

from specblock.bench.drafter_latency import DRAFT_SIZES
from specblock.budget import (
    auto_budget,
    drafter_key,
    expected_tokens_per_s,
    load_draft_latency,
    load_or_measure,
    measure_verify_latency,
    profile_path,
)
from specblock.errors import InvalidSettingError
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer


def test_auto_budget_maximises_expected_tokens_per_second():
    verify = {0: 0.010, 1: 0.010, 4: 0.012, 8: 0.014, 16: 0.020, 59: 0.040}
    calibration = {"budgets": [4, 8, 16, 59], "tau": [1.5, 1.9, 2.1, 2.3], "draft_ms": [2, 2, 3, 6]}
    # tokens/s: 0 -> 1/0.010 = 100 (plain decoding), 1 -> 1.125/0.0105 = 107 (tau interpolated from tau(0) = 1),
    # 4 -> 1.5/0.014 = 107, 8 -> 1.9/0.016 = 119, 16 -> 2.1/0.023 = 91, 59 -> 2.3/0.046 = 50
    assert auto_budget(verify, calibration) == 8
    # a verifier whose cost does not grow with n makes bigger trees worth it:
    # 16 -> 2.1/0.013 = 162 beats 8 -> 1.9/0.012 = 158 and 59 -> 2.3/0.016 = 144
    flat = {n: 0.010 for n in verify}
    assert auto_budget(flat, calibration) == 16


def test_auto_budget_falls_back_to_plain_decoding_when_no_tree_pays():
    # this CPU's shape: one draft node already costs 1.7 one-token forwards
    verify = {0: 0.065, 1: 0.109, 4: 0.114, 8: 0.120, 16: 0.157, 59: 0.298}
    calibration = {"budgets": [4, 8, 16, 59], "tau": [1.52, 1.66, 1.78, 1.97], "draft_ms": [67, 76, 102, 113]}
    # 0 -> 15.4 tokens/s; 4 -> 1.52/0.181 = 8.4; 8 -> 1.66/0.196 = 8.5; the best tree loses to no tree
    assert auto_budget(verify, calibration) == 0
    assert auto_budget(verify, None) == 0  # no tree verifies within 1.5 one-token forwards


def test_auto_budget_without_calibration_takes_the_largest_cheap_tree():
    verify = {0: 0.010, 1: 0.010, 4: 0.012, 8: 0.0149, 16: 0.016, 59: 0.040}
    assert auto_budget(verify, None) == 8


def test_profile_is_measured_once_and_cached(tiny_llama):
    runner = TargetRunner(Transformer.load(tiny_llama))
    latency = measure_verify_latency(runner, sizes=(0, 1, 4), context=16, repeats=1)
    assert set(latency) == {0, 1, 4} and all(t > 0 for t in latency.values())
    first = load_or_measure(runner, "tiny")
    path = profile_path("tiny", runner.model.dtype, "cpu")
    assert path.exists() and json.loads(path.read_text())["verify_s"]
    assert load_or_measure(runner, "tiny") == first  # read back, not re-measured


def test_generator_resolves_auto_and_rejects_bad_budgets(tiny_llama, monkeypatch):
    from specblock import SpecGenerator, methods

    # a fixed profile: what auto picks must not depend on this machine's timing noise
    monkeypatch.setattr(methods, "load_or_measure", lambda runner, name: {0: 0.010, 1: 0.011, 4: 0.012, 8: 0.014, 16: 0.030})
    gen = SpecGenerator.load(tiny_llama, "lookup", node_budget="auto")
    assert gen.node_budget == 8  # the largest tree verifying within 1.5 one-token forwards
    assert SpecGenerator.load(tiny_llama, "vanilla", node_budget="auto").node_budget == 0
    with pytest.raises(InvalidSettingError):
        SpecGenerator.load(tiny_llama, "lookup", node_budget="many")
    with pytest.raises(InvalidSettingError):
        SpecGenerator.load(tiny_llama, "lookup", node_budget=-1)


def test_measured_drafting_time_replaces_the_calibrations():
    verify = {0: 0.010, 1: 0.010, 4: 0.012, 8: 0.014, 16: 0.020, 59: 0.040}
    calibration = {"budgets": [4, 8, 16, 59], "tau": [1.5, 1.9, 2.1, 2.3], "draft_ms": [2, 2, 3, 6]}
    assert auto_budget(verify, calibration) == 8
    # the same drafter on a machine where drafting costs 20 ms: no tree pays (8 -> 1.9/0.034 = 56 < 100)
    slow = {4: 0.020, 8: 0.020, 16: 0.020, 59: 0.020}
    assert auto_budget(verify, calibration, draft_s=slow) == 0
    speed = expected_tokens_per_s(verify, calibration, slow)
    assert speed[0] == pytest.approx(100.0) and speed[8] == pytest.approx(1.9 / 0.034)


def test_profile_command_times_a_drafter_and_auto_uses_it(tiny_llama, tmp_path):
    from neural_helpers import random_specblock

    from specblock import SpecGenerator
    from specblock.cli import app
    from specblock.drafters.checkpoint import save_drafter

    target = Transformer.load(tiny_llama)
    source = tmp_path / "drafter"
    calibration = {"budgets": [1, 4, 8], "tau": [1.9, 2.0, 2.1], "draft_ms": [0.001, 0.001, 0.001]}
    save_drafter(random_specblock(target), source, meta={"calibration": calibration})
    bad = CliRunner().invoke(app, ["profile", "--target", str(tiny_llama), "--drafters", "lookup"])
    assert bad.exit_code != 0 and "not a trained drafter method" in bad.output
    out = tmp_path / "profile"
    args = ["profile", "--target", str(tiny_llama), "--drafters", f"specblock={source}", "--out", str(out), "--dtype", "float32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "profile.json").read_text())
    (entry,) = record["drafters"]
    assert set(map(int, entry["draft_s"])) == set(DRAFT_SIZES) and all(t > 0 for t in entry["draft_s"].values())
    assert (out / "profile.png").stat().st_size > 0
    # `profile` measured the kernel table again (timing noise may change a choice): the profile
    # is filed under the kernels of a model loaded now
    runner = TargetRunner(Transformer.load(tiny_llama))
    saved = load_draft_latency(runner, str(tiny_llama), drafter_key("specblock", source))
    assert saved == {int(n): t for n, t in entry["draft_s"].items()}
    # auto weighs the measured drafting time, not the calibration's 1 microsecond: make the
    # stored measurement absurdly slow and auto must fall back to plain decoding
    path = profile_path(str(tiny_llama), target.dtype, "cpu")
    stored = json.loads(path.read_text())
    stored["verify_s"] = {"0": 0.010, "1": 0.011, "4": 0.012, "8": 0.014}  # fixed: no timing noise in a test
    stored["draft_s"][drafter_key("specblock", source)] = {str(n): 10.0 for n in DRAFT_SIZES}
    path.write_text(json.dumps(stored))
    assert SpecGenerator.load(tiny_llama, "specblock", drafter=source, node_budget="auto", dtype="float32").node_budget == 0
    stored["draft_s"] = {}
    path.write_text(json.dumps(stored))
    assert SpecGenerator.load(tiny_llama, "specblock", drafter=source, node_budget="auto", dtype="float32").node_budget > 0
    # a checkpoint retrained into the same directory is not matched to the old timings
    key = drafter_key("specblock", source)
    save_drafter(random_specblock(target, seed=1), source, meta={"calibration": calibration})
    assert drafter_key("specblock", source) != key


def test_batch_budgets_shrink_as_rows_get_dear_and_stay_when_rows_are_free():
    from specblock.budget import batch_budgets

    calibration = {"budgets": [4, 8, 16], "tau": [1.5, 1.7, 1.8], "draft_ms": [1.0, 1.2, 1.5]}
    sizes = (0, 1, 2, 4, 8, 16, 32, 64, 128)
    linear = {n: 0.010 * (1 + 0.03 * n) for n in sizes}  # every row costs (a CPU without AMX)
    flat = {n: 0.010 * (1 + 0.001 * n) for n in sizes}  # rows nearly free (AMX, a GPU)
    dear = batch_budgets(linear, calibration, 8)
    assert dear[1] > 0 and dear[8] < dear[1] and all(dear[b + 1] <= dear[b] for b in range(1, 8))
    cheap = batch_budgets(flat, calibration, 8)
    assert cheap[1] == 16 and cheap[4] > 0 and all(cheap[b] >= dear[b] for b in dear)  # drafting time bounds them
    from specblock.budget import auto_budget

    assert dear[1] == auto_budget(linear, calibration)  # one request: the batch-1 rule
