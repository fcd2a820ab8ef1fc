"""`specblock bench` on a tiny random model: rows, turns, resume, summary arithmetic, paired test, report, CLI."""

import json
import math
import random
import shutil

import pytest
from typer.testing import CliRunner

from specblock.bench.methods import parse_drafters, parse_methods
from specblock.bench.prompts import load_prompts
from specblock.bench.results import read_rows, row_key
from specblock.bench.runner import request_seed, run_bench
from specblock.bench.stats import bootstrap_mean_ci, mean_std, wilcoxon_signed_rank
from specblock.bench.summary import compare, summarise, write_summary
from specblock.cli import app
from specblock.errors import InvalidSettingError
from specblock.text import ChatTokenizer

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a short poem about the sea.", "Now make it shorter."]},
    {"question_id": 82, "category": "writing", "turns": ["Describe a cat in one line.", "Say it again for a dog."]},
    {"question_id": 83, "category": "writing", "turns": ["Not taken: the third writing question.", "x"]},
    {"question_id": 200, "category": "translation", "turns": ["Translate to French: good morning."]},
    {"question_id": 201, "category": "translation", "turns": ["Translate to German: thank you."]},
]
RUNS, MAX_NEW = 2, 12
METHODS = "vanilla,lookup@6,draft-model@4"
EXPECTED_ROWS = RUNS * (2 * 2 + 2 * 1) * 3  # runs x (two 2-turn + two 1-turn questions) x methods


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def bench_args(tiny_llama, tiny_draft_llama, data_file, out, **changes):
    args = {"target": str(tiny_llama), "methods": METHODS, "data": data_file, "per_category": 2, "runs": RUNS,
            "temperature": 0.0, "max_new_tokens": MAX_NEW, "out": out, "seed": 0, "dtype": "float32",
            "drafters": {"draft-model": str(tiny_draft_llama)}}  # fmt: skip
    return args | changes


@pytest.fixture(scope="module")
def bench_out(tiny_llama, tiny_draft_llama, data_file, tmp_path_factory):
    """One full benchmark through the CLI (vanilla, lookup, draft model; 2 runs; MT-bench 2 turns)."""
    out = tmp_path_factory.mktemp("bench")
    bench_cli(tiny_llama, tiny_draft_llama, data_file, out)
    return out


def bench_cli(tiny_llama, tiny_draft_llama, data_file, out) -> None:
    """`specblock bench` with the module's settings, through the CLI (report and summary included)."""
    result = CliRunner().invoke(app, [
        "bench", "--target", str(tiny_llama), "--methods", METHODS, "--data", str(data_file), "--per-category", "2",
        "--runs", str(RUNS), "--max-new-tokens", str(MAX_NEW), "--out", str(out),
        "--drafters", f"draft-model={tiny_draft_llama}", "--dtype", "float32",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_prompts_grouped_and_first_n(data_file):
    prompts = load_prompts(data_file, 2)
    assert [(p.category, p.question_id) for p in prompts] == [
        ("mt_bench", 81), ("mt_bench", 82), ("translation", 200), ("translation", 201)
    ]  # fmt: skip
    assert prompts[0].label == "writing" and len(prompts[0].turns) == 2


def test_rows_complete_with_own_turn_one_answer(bench_out, tiny_llama):
    rows = read_rows(bench_out / "results.jsonl")
    assert len(rows) == EXPECTED_ROWS == len({row_key(r) for r in rows})
    fields = ["category", "question_id", "turn", "method", "run", "new_tokens", "iterations", "wall_s", "prefill_s",
              "accepted_lengths", "draft_ms", "target_ms", "drafter_forwards", "mean_tree_nodes", "equal_to_vanilla"]  # fmt: skip
    for r in rows:
        assert all(k in r for k in fields)
        assert len(r["accepted_lengths"]) == len(r["draft_ms"]) == len(r["target_ms"]) == r["iterations"] - 1
        assert r["equal_to_vanilla"] is True  # greedy lookup and draft-model decoding are lossless
    assert {r["turn"] for r in rows if r["category"] == "mt_bench"} == {1, 2}
    assert {r["turn"] for r in rows if r["category"] == "translation"} == {1}
    tok = ChatTokenizer.load(tiny_llama)
    by_key = {row_key(r): r for r in rows}
    q = QUESTIONS[0]
    for method in ["vanilla", "lookup@6"]:
        first = by_key[(json.dumps(81), 1, method, 1)]
        second = by_key[(json.dumps(81), 2, method, 1)]
        chat = [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": tok.decode(first["token_ids"])},
                {"role": "user", "content": q["turns"][1]}]  # fmt: skip
        assert second["prompt_tokens"] == len(tok.encode(messages=chat))
    settings = json.loads((bench_out / "settings.json").read_text())
    assert settings["node_budgets"] == {"vanilla": 0, "lookup@6": 6, "draft-model@4": 4}


def test_rerun_adds_nothing_and_loads_nothing(bench_out, tiny_llama, tiny_draft_llama, data_file, monkeypatch):
    from specblock.bench import runner

    before = {name: (bench_out / name).read_text() for name in ("results.jsonl", "settings.json")}

    def no_load(*args, **kwargs):
        raise AssertionError("a finished bench loaded the models")

    monkeypatch.setattr(runner, "build_generators", no_load)
    settings = run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, bench_out, runs=1))  # run 1 is done too
    assert settings == json.loads(before["settings.json"])
    assert {name: (bench_out / name).read_text() for name in before} == before  # no resume recorded: nothing ran


def test_rows_to_measure_counts_every_turn_run_and_reference_once(tmp_path):
    from specblock.bench.prompts import Prompt
    from specblock.bench.results import ResultsFile
    from specblock.bench.runner import rows_to_measure

    prompts = [Prompt("mt_bench", "writing", 81, ("a", "b")), Prompt("qa", "qa", "q7", ("c",))]
    specs = parse_methods("vanilla,lookup@4")
    results = ResultsFile(tmp_path)

    def row(qid, turn, method, run):
        return {"question_id": qid, "turn": turn, "method": method, "run": run}

    for run in (1, 2, 3):
        for qid, turn in [(81, 1), (81, 2), ("q7", 1)]:
            for method in ("vanilla", "lookup@4"):
                results.append(row(qid, turn, method, run))
    assert rows_to_measure(results, prompts, specs, 3, []) == 0
    assert rows_to_measure(results, prompts, specs, 4, []) == 6  # a run added: every row of it
    assert rows_to_measure(results, prompts, specs, 3, ["llama.cpp-server"]) == 3  # references: run 1 only
    for qid, turn in [(81, 1), ("q7", 1)]:
        results.append(row(qid, turn, "llama.cpp-server", 1))
    assert rows_to_measure(results, prompts, specs, 3, ["llama.cpp-server"]) == 1  # MT-bench's turn 2 still missing
    results.append(row(81, 2, "llama.cpp-server", 1))
    assert rows_to_measure(results, prompts, specs, 3, ["llama.cpp-server"]) == 0
    as_text = [Prompt("mt_bench", "writing", "81", ("a", "b"))]  # the id "81" is not 81
    assert rows_to_measure(results, as_text, specs, 1, []) == 4


def test_the_cli_rewrites_a_finished_benchs_report_without_loading(bench_out, tiny_llama, tiny_draft_llama, data_file,
                                                                    tmp_path, monkeypatch):  # fmt: skip
    from specblock.bench import runner

    out = tmp_path / "copy"
    shutil.copytree(bench_out, out)
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    monkeypatch.setattr(runner, "build_generators", lambda *a, **k: pytest.fail("a finished bench loaded the models"))
    bench_cli(tiny_llama, tiny_draft_llama, data_file, out)
    assert (out / "report.md").read_text() == (bench_out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text()) == json.loads((bench_out / "summary.json").read_text())


def test_a_bench_with_one_row_left_loads_and_measures_it(bench_out, tiny_llama, tiny_draft_llama, data_file, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bench_out, out)
    rows = read_rows(out / "results.jsonl")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, out))
    again = read_rows(out / "results.jsonl")
    assert len(again) == len(rows) and row_key(again[-1]) == row_key(rows[-1])
    assert len(json.loads((out / "settings.json").read_text())["resumed"]) == 1


def test_finished_rows_without_their_settings_get_them_written_again(bench_out, tiny_llama, tiny_draft_llama, data_file,
                                                                      tmp_path):  # fmt: skip
    out = tmp_path / "copy"
    shutil.copytree(bench_out, out)
    (out / "settings.json").unlink()
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, out))
    assert json.loads((out / "settings.json").read_text())["node_budgets"]["lookup@6"] == 6


def test_a_finished_bench_still_measures_a_reference_it_lacks(
    bench_out, tiny_llama, tiny_draft_llama, data_file, monkeypatch
):
    from specblock.bench import runner

    def loaded(*args, **kwargs):
        raise RuntimeError("loaded")

    monkeypatch.setattr(runner, "build_generators", loaded)
    with pytest.raises(RuntimeError, match="loaded"):  # its rows are missing: the models are needed
        run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, bench_out, references=["llama.cpp-server"]))


def test_interrupted_run_resumes(bench_out, tiny_llama, tiny_draft_llama, data_file, tmp_path):
    calls = []

    def stop_after_seven(stage, done, total):
        calls.append(done)
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path, report=stop_after_seven))
    path = tmp_path / "results.jsonl"
    with path.open("a") as f:
        f.write('{"category": "mt_bench", "question_id": 82, "tu')  # killed in the middle of a write
    assert len(read_rows(path)) == 7
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path))
    rows = read_rows(path)
    assert len(rows) == EXPECTED_ROWS == len({row_key(r) for r in rows})
    full = {row_key(r): r["token_ids"] for r in read_rows(bench_out / "results.jsonl")}
    assert all(full[row_key(r)] == r["token_ids"] and r["equal_to_vanilla"] for r in rows)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert len(settings["resumed"]) == 1  # the first start's date stays; the resume is listed
    assert settings["date"] <= settings["resumed"][0]["date"]


def test_other_settings_refuse_to_resume(bench_out, tiny_llama, tiny_draft_llama, data_file, tmp_path):
    shutil.copytree(bench_out, tmp_path / "copy")
    with pytest.raises(InvalidSettingError, match="max_new_tokens"):
        run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "copy", max_new_tokens=MAX_NEW + 1))
    # timings from another CPU are refused; a directory from before the CPU was recorded resumes
    settings_path = tmp_path / "copy" / "settings.json"
    settings = json.loads(settings_path.read_text())
    assert settings["cpu"] and "rows padded to" in settings["kernels"]  # the target's kernel choice is recorded
    settings_path.write_text(json.dumps(settings | {"cpu": "another CPU [cpu family 1 model 2 stepping 3]"}))
    with pytest.raises(InvalidSettingError, match="cpu"):
        run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "copy"))
    settings.pop("cpu")
    settings.pop("kernels")
    settings_path.write_text(json.dumps(settings))
    rows = read_rows(tmp_path / "copy" / "results.jsonl")  # one row left to measure: a real resume
    (tmp_path / "copy" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "copy"))
    assert [row_key(r) for r in read_rows(tmp_path / "copy" / "results.jsonl")] == [row_key(r) for r in rows]
    # what the first rows were measured on stays unknown: the resume records its own beside itself
    resumed = json.loads(settings_path.read_text())
    assert "cpu" not in resumed and "kernels" not in resumed
    assert resumed["resumed"][-1]["cpu"] and "rows padded to" in resumed["resumed"][-1]["kernels"]
    # and a later resume is held to what that resume recorded
    resumed["resumed"][-1]["kernels"] = "bfloat16: torch, rows padded to 2, row-invariant"
    settings_path.write_text(json.dumps(resumed))
    with pytest.raises(InvalidSettingError, match="kernels"):
        run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "copy"))


def test_llama_server_flags_are_recorded_and_a_resume_with_others_refused(tmp_path):
    """A reference row measured with some llama-server flags (e.g. EAGLE-3's draft length) never
    shares a report with rows of other flags; a reference added on resume is recorded beside."""
    from specblock.bench.results import check_settings, write_settings

    base = {"target": "t", "dtype": "auto", "device": "cpu", "temperature": 0.0, "max_new_tokens": 8, "seed": 0}
    eagle = {"llama.cpp-server-eagle3": ["--spec-type", "draft-eagle3", "--spec-draft-n-max", "8"]}
    write_settings(tmp_path, base | {"reference_flags": eagle})
    (tmp_path / "results.jsonl").write_text("")
    other = {"llama.cpp-server-eagle3": ["--spec-type", "draft-eagle3", "--spec-draft-n-max", "3"]}
    with pytest.raises(InvalidSettingError, match="spec-draft-n-max"):
        check_settings(tmp_path, base | {"reference_flags": other})
    added = base | {"reference_flags": {"llama.cpp-server": []}}
    check_settings(tmp_path, added)
    assert added["reference_flags"] == eagle | {"llama.cpp-server": []}
    write_settings(tmp_path, base)  # a report from before the flags were recorded resumes
    check_settings(tmp_path, base | {"reference_flags": other})


def test_a_resume_with_other_drafters_or_kernels_is_refused(tmp_path):
    """Rows of the shipped pair and of a training run's drafters, or of two kernel choices,
    never pool in one report."""
    from specblock.bench.results import check_settings, write_settings

    base = {"target": "t", "dtype": "auto", "device": "cpu", "temperature": 0.0, "max_new_tokens": 8, "seed": 0}
    chunked = "bfloat16: onednn, rows padded to 1, exact calls in chunks of 16 rows, row-invariant"
    write_settings(tmp_path, base | {"drafters": {}, "kernels": chunked})
    (tmp_path / "results.jsonl").write_text("")
    check_settings(tmp_path, base | {"drafters": {}, "kernels": chunked})
    with pytest.raises(InvalidSettingError, match="drafters"):
        check_settings(tmp_path, base | {"drafters": {"specblock": "/runs/t-specblock/drafter"}, "kernels": chunked})
    plain = "bfloat16: onednn, rows padded to 1, not row-invariant"
    with pytest.raises(InvalidSettingError, match="kernels"):
        check_settings(tmp_path, base | {"drafters": {}, "kernels": plain})


def test_sampling_rows_are_seeded(tiny_llama, tiny_draft_llama, data_file, tmp_path):
    assert request_seed(0, 81, 1, 1) == request_seed(0, 81, 1, 1) != request_seed(0, 81, 2, 1)
    args = {"methods": "vanilla,lookup", "per_category": 1, "runs": 1, "temperature": 1.0, "drafters": None}
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "a", **args))
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path / "b", **args))
    a, b = read_rows(tmp_path / "a" / "results.jsonl"), read_rows(tmp_path / "b" / "results.jsonl")
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert all(r["equal_to_vanilla"] is None for r in a)


def test_report_and_plots_written(bench_out):
    summary = write_summary(bench_out)
    for name in ["summary.json", "report.md", "speedup.png", "accept_hist.png", "slot_acceptance.png"]:
        assert (bench_out / name).stat().st_size > 0
    report = (bench_out / "report.md").read_text()
    assert "tau = total new tokens / total target forwards" in report and "| lookup@6 | mt_bench |" in report
    assert "turn 2" in report
    assert summary["table"]["lookup@6"]["all"]["equal_to_vanilla"] is True
    assert summary["table"]["vanilla"]["all"]["tau"] == 1.0
    assert summary["table"]["vanilla"]["all"]["speedup_mean"] == pytest.approx(1.0)
    assert json.loads((bench_out / "summary.json").read_text())["methods"] == ["vanilla", "lookup@6", "draft-model@4"]


def _row(method, cat, qid, run, new, iters, wall, acc, fwd=0, nodes=0.0, draft=1.0, target=2.0):
    return {"category": cat, "question_id": qid, "turn": 1, "method": method, "run": run, "new_tokens": new,
            "iterations": iters, "wall_s": wall, "prefill_s": 0.1 * wall, "accepted_lengths": acc,
            "draft_ms": [draft] * len(acc), "target_ms": [target] * len(acc), "drafter_forwards": fwd,
            "mean_tree_nodes": nodes, "equal_to_vanilla": True}  # fmt: skip


def synthetic_rows():
    rows = []
    for run, (w1, w2, s1, s2) in {1: (1.0, 2.0, 0.5, 1.0), 2: (1.0, 1.0, 0.4, 0.8)}.items():
        rows += [_row("vanilla", "qa", 1, run, 10, 10, w1, [0] * 9), _row("vanilla", "mt_bench", 2, run, 11, 11, w2, [0] * 10),
                 _row("sb", "qa", 1, run, 10, 4, s1, [3, 2, 1], fwd=6, nodes=5.0, draft=1.0),
                 _row("sb", "mt_bench", 2, run, 11, 5, s2, [1, 2, 3, 0], fwd=8, nodes=10.0, draft=2.0)]  # fmt: skip
    return rows


def test_summary_matches_hand_computation(tmp_path):
    s = summarise(synthetic_rows(), ["vanilla", "sb"], pairs=[])
    assert s["categories"] == ["mt_bench", "qa", "all"]
    e = s["table"]["sb"]["all"]
    assert e["tau"] == pytest.approx(42 / 18)
    assert e["tokens_per_s"] == pytest.approx(42 / 2.7)
    assert e["decode_tokens_per_s"] == pytest.approx(38 / (0.9 * 2.7))
    assert e["speedup_per_run"] == {1: pytest.approx(2.0), 2: pytest.approx(5 / 3)}
    assert e["speedup_mean"] == pytest.approx(11 / 6)
    assert e["speedup_std"] == pytest.approx((1 / 3) / math.sqrt(2))
    assert e["tokens_per_s_mean"] == pytest.approx((14 + 17.5) / 2)
    assert s["table"]["sb"]["mt_bench"]["speedup_per_run"] == {1: pytest.approx(2.0), 2: pytest.approx(1.25)}
    assert e["slot_acceptance"][:4] == pytest.approx([6 / 7, 4 / 7, 2 / 7, 0.0])
    assert e["accept_length_hist"] == [2, 4, 4, 4]
    assert e["drafter_forwards_per_iteration"] == pytest.approx(28 / 14)
    assert e["draft_ms_per_iteration"] == pytest.approx((3 * 1.0 + 4 * 2.0) / 7)
    assert e["target_ms_per_iteration"] == pytest.approx(2.0)
    assert e["mean_tree_nodes"] == pytest.approx((3 * 5 + 4 * 10) / 7)
    assert e["equal_to_vanilla"] is True and e["equal_to_vanilla_count"] == "4/4"
    assert mean_std([1.0]) == (1.0, None)


def test_a_row_timed_across_a_stop_is_left_out_of_the_timings_only():
    """A third question whose sb row in run 2 spans a pause (`suspended`, 100 s): every timing
    equals the summary without that row and without vanilla's counterpart in its speedup, while
    tau and the output check count it."""
    extra = [_row("vanilla", "qa", 3, run, 10, 10, 1.0, [0] * 9) for run in (1, 2)]
    extra += [_row("sb", "qa", 3, 1, 10, 5, 0.5, [1, 2, 3, 0], fwd=8, draft=1.0)]
    stopped = _row("sb", "qa", 3, 2, 10, 5, 100.0, [1, 2, 3, 0], fwd=8, draft=500.0, target=9000.0) | {"suspended": True}
    # and a fourth question whose vanilla row in run 1 spans a pause: sb's row there has no speedup pair
    extra += [_row("vanilla", "qa", 4, 2, 10, 10, 1.0, [0] * 9)]
    extra += [_row("sb", "qa", 4, run, 10, 5, 0.5, [1, 2, 3, 0], fwd=8, draft=1.0) for run in (1, 2)]
    stopped_vanilla = _row("vanilla", "qa", 4, 1, 10, 10, 100.0, [0] * 9) | {"suspended": True}
    with_stop = summarise(synthetic_rows() + extra + [stopped, stopped_vanilla], ["vanilla", "sb"],
                          pairs=[("sb", "vanilla")])  # fmt: skip
    expected = summarise(synthetic_rows() + extra, ["vanilla", "sb"], pairs=[("sb", "vanilla")])
    a, b = with_stop["table"]["sb"]["all"], expected["table"]["sb"]["all"]
    for key in ("tokens_per_s", "tokens_per_s_mean", "decode_tokens_per_s", "speedup_per_run", "draft_ms_per_iteration",
                "target_ms_per_iteration", "prefill_ms_mean"):  # fmt: skip
        assert a[key] == pytest.approx(b[key]), key
    assert a["speedup_per_run"][1] == pytest.approx((31 / 2.0) / (31 / 4.0))  # questions 1-3: question 4 unpaired
    assert a["tau"] == pytest.approx((42 + 40) / (18 + 20)) != b["tau"]  # question 3's stopped sb row counts
    assert a["iterations"] == b["iterations"] + 4 and a["runs"] == 2  # so do its acceptance and its run
    assert a["equal_to_vanilla_count"] == "8/8"
    vanilla_tps = [summary["table"]["vanilla"]["all"]["tokens_per_s"] for summary in (with_stop, expected)]
    assert vanilla_tps[0] == pytest.approx(vanilla_tps[1])
    assert with_stop["comparisons"][0]["ci95_mean_ratio"] == expected["comparisons"][0]["ci95_mean_ratio"]
    assert with_stop["suspended_rows"] == 2


def test_a_paired_test_drops_a_stopped_rows_counterpart_and_all_stopped_timings_are_empty():
    """A stopped turn 2 of one method takes the other method's turn 2 out of that question's
    ratio (else the two sides pool different turns); a method whose rows all stopped has no
    timings, and the report prints dashes."""
    from specblock.bench.report import render_report

    def row(method, turn, wall, suspended=False):
        r = _row(method, "mt_bench", 1, 1, 10, 5, wall, [1, 1, 1, 1]) | {"turn": turn}
        return r | {"suspended": True} if suspended else r

    rows = [row("vanilla", 1, 2.0), row("vanilla", 2, 2.0), row("a", 1, 1.0), row("a", 2, 50.0, suspended=True),
            row("b", 1, 2.0), row("b", 2, 0.1)]  # fmt: skip
    c = summarise(rows, ["vanilla", "a", "b"], pairs=[("a", "b")])["comparisons"][0]
    assert c["pairs"] == 1 and c["mean_ratio"] == pytest.approx(2.0)  # turn 1 only: 10/1.0 against 10/2.0
    stopped = [row("vanilla", 1, 2.0), row("a", 1, 1.0, suspended=True)]
    s = summarise(stopped, ["vanilla", "a"], pairs=[])
    e = s["table"]["a"]["all"]
    assert e["tokens_per_s"] is None and e["speedup_mean"] is None and e["prefill_ms_mean"] is None
    assert e["tau"] == pytest.approx(2.0) and e["runs"] == 1
    assert "| a | all | 2.00 | - |" in render_report(s | {"settings": {}})


def paired_rows(ratios):
    rows = []
    for q, ratio in enumerate(ratios):
        rows += [_row("eagle3", "qa", q, 1, 10, 5, 1.0, [1]), _row("specblock", "qa", q, 1, 10, 5, 1.0 / ratio, [1])]
    return rows


def test_paired_test_clear_and_identical():
    rng = random.Random(1)
    better = compare(paired_rows([1.5 + 0.05 * rng.random() for _ in range(12)]), "specblock", "eagle3")
    assert better["wilcoxon"]["p_value"] == pytest.approx(2 / 2**12)  # exact: all 12 signs positive
    assert better["wilcoxon"]["method"] == "exact" and better["a_faster_on"] == 12
    lo, hi = better["ci95_mean_ratio"]
    assert 1.5 <= lo <= better["mean_ratio"] <= hi <= 1.55
    same = compare(paired_rows([1.0] * 12), "specblock", "eagle3")
    assert same["wilcoxon"]["p_value"] == 1.0 and same["mean_ratio"] == pytest.approx(1.0)
    noisy = wilcoxon_signed_rank([rng.gauss(0, 1) for _ in range(30)])
    assert noisy["p_value"] > 0.001
    assert summarise(paired_rows([1.2] * 3), pairs=None)["comparisons"][0]["a"] == "specblock"  # default pair


def test_paired_comparison_per_category():
    rows = paired_rows([2.0, 0.5, 1.25])  # questions 0-2 in qa
    rows += [dict(r, category="rag", question_id=r["question_id"] + 10) for r in paired_rows([0.8, 0.9])]
    by_category = compare(rows, "specblock", "eagle3")["by_category"]
    assert list(by_category) == ["qa", "rag"]  # the design's category order
    qa, rag = by_category["qa"], by_category["rag"]
    assert qa["pairs"] == 3 and qa["a_faster_on"] == 2 and (qa["min_ratio"], qa["max_ratio"]) == pytest.approx((0.5, 2.0))
    assert qa["geometric_mean_ratio"] == pytest.approx(1.25 ** (1 / 3))
    assert rag["a_faster_on"] == 0 and rag["geometric_mean_ratio"] == pytest.approx(math.sqrt(0.72))


def test_wilcoxon_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    exact = [rng.gauss(0.3, 1) for _ in range(15)]
    tied = [round(rng.gauss(0.2, 1), 1) for _ in range(70)] + [0.0] * 3
    for d in (exact, tied):
        ref = stats.wilcoxon(d)
        ours = wilcoxon_signed_rank(d)
        assert ours["statistic"] == pytest.approx(ref.statistic)
        assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    lo, hi = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "vanilla,foo"], "unknown method 'foo'"),
        (["--methods", "lookup,vanilla"], "must start with plain `vanilla`"),
        (["--data", "/nonexistent/q.jsonl"], "does not exist"),
        (["--methods", "vanilla,lookup@many"], "must be a number of draft nodes or 'auto'"),
        (["--compare", "vanilla,eagle3"], "--compare"),
        (["--methods", "vanilla,lookup:x"], "take a variant label"),
        (["--drafters", "lookup=/x"], "--drafters applies to"),
        (["--references", "vllm"], "unknown reference engine"),
    ],
)
def test_cli_bad_input_one_line(args, message, data_file, tmp_path):
    base = {"--data": str(data_file), "--methods": "vanilla,lookup", "--out": str(tmp_path)}
    base.update(dict(zip(args[::2], args[1::2])))
    result = CliRunner().invoke(app, ["bench", "--target", "nope", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_methods_parse_budgets():
    specs = parse_methods("vanilla,specblock@59,eagle3@auto,lookup")
    assert [(s.name, s.budget) for s in specs] == [
        ("vanilla", None),
        ("specblock", "59"),
        ("eagle3", "auto"),
        ("lookup", None),
    ]
    with pytest.raises(InvalidSettingError, match="twice"):
        parse_methods("vanilla,lookup,lookup")


def test_method_variants_find_their_own_drafter():
    specs = parse_methods("vanilla,specblock@8,specblock:noshift@8,specblock:fixed-topk")
    assert [(s.name, s.label, s.budget, s.drafter_key) for s in specs[1:]] == [
        ("specblock", "", "8", "specblock"),
        ("specblock", "noshift", "8", "specblock:noshift"),
        ("specblock", "fixed-topk", None, "specblock:fixed-topk"),
    ]
    assert parse_drafters("specblock=a,specblock:noshift=b,draft-model=c") == {
        "specblock": "a", "specblock:noshift": "b", "draft-model": "c",
    }  # fmt: skip
    with pytest.raises(InvalidSettingError, match="draft-model"):
        parse_drafters("draft-model:x=c")


def test_llama_cpp_speculative_references_say_why_they_cannot_run(tiny_llama):
    """A local target has no GGUF file and no shipped EAGLE-3 drafter: each reference is listed
    with its reason instead of failing the benchmark."""
    from specblock import SpecGenerator
    from specblock.bench.runner import start_references

    vanilla = SpecGenerator.load(str(tiny_llama), "vanilla", dtype="float32")
    settings = {}
    engines = start_references(["llama.cpp-server-ngram", "llama.cpp-server-eagle3"], str(tiny_llama), vanilla, settings)
    assert engines == {}
    assert "no GGUF file" in settings["references_unavailable"]["llama.cpp-server-ngram"]
    assert "--drafters eagle3=DIR" in settings["references_unavailable"]["llama.cpp-server-eagle3"]


class FlakyReference:
    """Stands in for a reference process: answers `works` requests (the warm-up included), then
    fails as a dead llama-server does."""

    works = 2
    closed: list[str] = []

    def __init__(self, name: str, *args: str) -> None:
        self.name, self.calls = name, 0

    def run(self, ids: list[int], max_new: int) -> dict:
        self.calls += 1
        if self.calls > self.works:
            raise RuntimeError(f"{self.name}: the reference process exited")
        return {"new_tokens": max_new, "wall_s": 0.5}

    def close(self) -> None:
        FlakyReference.closed.append(self.name)


def test_a_reference_that_fails_is_listed_and_the_benchmark_goes_on(
    tiny_llama, tiny_draft_llama, data_file, tmp_path, monkeypatch
):
    """A reference that fails its warm-up is never used; one that dies mid-run keeps the rows it
    made, is closed and listed with the question it failed on, and every method's rows are made."""
    from specblock import SpecGenerator
    from specblock.bench import reference_engines
    from specblock.bench.runner import start_references

    monkeypatch.setattr(reference_engines, "ReferenceProcess", FlakyReference)
    monkeypatch.setattr(FlakyReference, "closed", [])
    vanilla = SpecGenerator.load(str(tiny_llama), "vanilla", dtype="float32")
    monkeypatch.setattr(FlakyReference, "works", 0)
    settings = {}
    assert start_references(["llama.cpp"], str(tiny_llama), vanilla, settings) == {}
    assert settings["references_unavailable"]["llama.cpp"].startswith("failed its warm-up")
    assert FlakyReference.closed == ["llama.cpp"]
    monkeypatch.setattr(FlakyReference, "works", 2)  # the warm-up and the first question's first turn
    run_bench(**bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path, runs=1, references=["llama.cpp"]))
    rows = read_rows(tmp_path / "results.jsonl")
    assert [(r["question_id"], r["turn"]) for r in rows if r["method"] == "llama.cpp"] == [(81, 1)]
    assert len([r for r in rows if r["method"] != "llama.cpp"]) == EXPECTED_ROWS // RUNS
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["references_unavailable"]["llama.cpp"].startswith("failed on 81")
    assert FlakyReference.closed == ["llama.cpp", "llama.cpp"]


def test_llama_server_rows_count_its_target_forwards_from_the_accepted_drafts():
    from specblock.bench.prompts import Prompt
    from specblock.bench.reference_engines import server_timings
    from specblock.bench.runner import reference_row

    prompt = Prompt(category="qa", label="qa", question_id=1, turns=("q",))
    # 10 tokens: the prompt's forward gives the first, 6 accepted drafts ride on 3 more forwards
    out = {"tokens_predicted": 10, "timings": {"prompt_ms": 250.0, "draft_n": 12, "draft_n_accepted": 6}}
    row = reference_row(prompt, 0, "llama.cpp-server-ngram", {"new_tokens": 10, "wall_s": 1.0} | server_timings(out), 5)
    assert (row["iterations"], row["prefill_s"], row["draft_tokens"], row["draft_accepted"]) == (4, 0.25, 12, 6)
    assert summarise([row])["table"]["llama.cpp-server-ngram"]["all"]["tau"] == pytest.approx(2.5)  # the report's tau
    plain = {"tokens_predicted": 10, "timings": {"prompt_ms": 40.0}}  # no speculative mode: no draft keys
    row = reference_row(prompt, 0, "llama.cpp-server", {"new_tokens": 10, "wall_s": 1.0} | server_timings(plain), 5)
    assert row["iterations"] == 10 and row["draft_accepted"] == 0


def test_a_resume_keeps_the_auto_budget_its_rows_ran_at(tiny_llama, tiny_draft_llama, data_file, tmp_path, monkeypatch):
    """`auto` is resolved per process; a resumed bench must not measure the rest at another budget."""
    from specblock import methods

    monkeypatch.setattr(methods, "budget_inputs", lambda target, name, drafter: (None, None, None))
    monkeypatch.setattr(methods, "auto_budget", lambda profile, calibration, draft_s=None: 5)

    def stop_after_three(stage, done, total):
        if done == 3:
            raise KeyboardInterrupt

    args = bench_args(tiny_llama, tiny_draft_llama, data_file, tmp_path) | {"methods": "vanilla,lookup@auto"}
    with pytest.raises(KeyboardInterrupt):
        run_bench(**args | {"report": stop_after_three})
    monkeypatch.setattr(methods, "auto_budget", lambda profile, calibration, draft_s=None: 7)  # a new profile
    run_bench(**args)
    rows = [r for r in read_rows(tmp_path / "results.jsonl") if r["method"] == "lookup@auto"]
    assert len(rows) > 1 and {r["node_budget"] for r in rows} == {5}
    assert json.loads((tmp_path / "settings.json").read_text())["node_budgets"]["lookup@auto"] == 5
    fresh = tmp_path / "fresh"
    run_bench(**args | {"out": fresh})  # a new directory resolves `auto` anew
    assert {r["node_budget"] for r in read_rows(fresh / "results.jsonl") if r["method"] == "lookup@auto"} == {7}
