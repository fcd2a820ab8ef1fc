"""`specblock data regen` on the tiny random models: input formats, output rows, resume, batching, mix."""

import json
import logging
import shutil
from collections import Counter

import pytest
from typer.testing import CliRunner

from specblock import SpecGenerator
from specblock.cli import app
from specblock.errors import InvalidSettingError
from specblock.training.conversations import read_conversations
from specblock.training.regen import RegenSettings, done_ids, draw_temperature, regenerate

PROMPTS = ["Hi there, who are you?", "Count: 1 2 3", "Write a poem about the sea.", "abc abc abc", "What is 7 times 8?"]


@pytest.fixture
def prompt_files(tmp_path):
    """The same kind of prompts in the three formats (ShareGPT as a JSON list and as JSONL)."""
    ultra = tmp_path / "ultrachat_small.jsonl"
    ultra.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": p}, {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "and then?"}]}) for p in PROMPTS[:3]) + "\n")  # fmt: skip
    share = tmp_path / "sharegpt_v3.json"
    share.write_text(json.dumps([{"id": f"sg{i}", "conversations": [{"from": "human", "value": p}]}
                                 for i, p in enumerate(PROMPTS[3:])]))  # fmt: skip
    share_lines = tmp_path / "sharegpt_more.jsonl"
    share_lines.write_text(json.dumps({"id": "sgl0", "source": "sharegpt", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Say hi"}]}) + "\n")  # fmt: skip
    gsm = tmp_path / "gsm8k_train.jsonl"
    gsm.write_text("".join(json.dumps({"question": p, "answer": "42"}) + "\n" for p in PROMPTS[:2]))
    return [ultra, share, share_lines, gsm]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_three_formats_are_read(prompt_files):
    ultra, share, share_lines, gsm = (read_conversations(p) for p in prompt_files)
    assert [c.id for c in ultra] == ["ultrachat-0", "ultrachat-1", "ultrachat-2"]
    assert ultra[0].first_user_turn() == [{"role": "user", "content": PROMPTS[0]}]
    assert [(c.id, c.source) for c in share] == [("sg0", "sharegpt"), ("sg1", "sharegpt")]
    assert share[1].first_user_turn() == [{"role": "user", "content": PROMPTS[4]}]
    assert share_lines[0].first_user_turn() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert [(c.id, c.source) for c in gsm] == [("gsm8k-0", "gsm8k"), ("gsm8k-1", "gsm8k")]


def test_output_rows_match_the_shared_answer_format(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "out" / "answers.jsonl"
    seen = []
    n = regenerate(prompt_files, out, RegenSettings(str(tiny_llama), max_new_tokens=6, batch_size=1),
                   report=lambda stage, done, total: seen.append((stage, done, total)))  # fmt: skip
    got = rows(out)
    assert n == len(got) == 8
    assert [r["id"] for r in got] == [
        "ultrachat-0",
        "ultrachat-1",
        "ultrachat-2",
        "sg0",
        "sg1",
        "sgl0",
        "gsm8k-0",
        "gsm8k-1",
    ]
    for r in got:
        assert list(r) == ["id", "source", "messages", "finish_reason", "temperature"]
        assert r["finish_reason"] in ("stop", "length") and r["temperature"] == 0.0
        assert [m["role"] for m in r["messages"]][-2:] == ["user", "assistant"]
        assert isinstance(r["messages"][-1]["content"], str)
    assert got[0]["messages"][0] == {"role": "user", "content": PROMPTS[0]} and len(got[0]["messages"]) == 2
    assert got[5]["messages"][0]["role"] == "system"
    answers = read_conversations(out)  # what `data prepare` reads back
    assert [c.extra["finish_reason"] for c in answers] == [r["finish_reason"] for r in got]
    assert seen[0] == ("regen", 0, 8) and seen[-1] == ("regen", 8, 8)


def test_resume_skips_written_ids_and_repairs_a_cut_last_line(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "answers.jsonl"
    settings = {"target": str(tiny_llama), "max_new_tokens": 5, "batch_size": 1}
    assert regenerate(prompt_files, out, RegenSettings(**settings, limit=2)) == 2
    assert regenerate(prompt_files, out, RegenSettings(**settings)) == 6
    full = rows(out)
    assert len({r["id"] for r in full}) == len(full) == 8
    assert regenerate(prompt_files, out, RegenSettings(**settings)) == 0
    # a kill in the middle of the last row's write
    text = out.read_text()
    kept, last = text.rstrip("\n").rsplit("\n", 1)
    out.write_text(kept + "\n" + last[: len(last) // 2])
    assert done_ids(out) == {r["id"] for r in full[:-1]}
    assert out.read_text() == kept + "\n"
    out.write_text(kept + "\n" + last[: len(last) // 2])
    assert regenerate(prompt_files, out, RegenSettings(**settings)) == 1
    assert rows(out) == full  # greedy: the regenerated row is the same
    out.write_text("not json\n" + text)
    with pytest.raises(InvalidSettingError, match="not a regenerated-answer row"):
        regenerate(prompt_files, out, RegenSettings(**settings))


def test_batch_size_1_greedy_is_the_targets_exact_greedy_decoding(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "answers.jsonl"
    regenerate(prompt_files, out, RegenSettings(str(tiny_llama), max_new_tokens=24, batch_size=1))
    vanilla = SpecGenerator.load(str(tiny_llama), method="vanilla", dtype="float32")
    for r in rows(out):
        ref = vanilla.generate(messages=r["messages"][:-1], max_new_tokens=24)
        assert r["messages"][-1]["content"] == ref.text
        assert r["finish_reason"] == ("stop" if ref.stop_reason == "eos" else "length")


def test_batched_mode_writes_valid_rows(tiny_qwen2, prompt_files, tmp_path):
    out = tmp_path / "answers.jsonl"
    assert regenerate(prompt_files, out, RegenSettings(str(tiny_qwen2), max_new_tokens=10, batch_size=3)) == 8
    got = rows(out)
    assert sorted(r["id"] for r in got) == sorted(c.id for p in prompt_files for c in read_conversations(p))
    vanilla = SpecGenerator.load(str(tiny_qwen2), method="vanilla", dtype="float32")
    same = 0
    for r in got:
        assert list(r) == ["id", "source", "messages", "finish_reason", "temperature"]
        ref = vanilla.generate(messages=r["messages"][:-1], max_new_tokens=10)
        same += r["messages"][-1]["content"] == ref.text
    assert same >= 6  # padded batches may differ from batch-1 decoding only on near-ties


@pytest.mark.parametrize("batch_size", [1, 2])
def test_answers_stop_at_eos(tiny_llama, tmp_path, batch_size):
    """A model whose config also names a frequent character as EOS: answers end there, without it."""
    vanilla = SpecGenerator.load(str(tiny_llama), method="vanilla", dtype="float32")
    prompts = tmp_path / "gsm8k.jsonl"
    prompts.write_text("".join(json.dumps({"question": p}) + "\n" for p in PROMPTS))
    first = [vanilla.generate(p, max_new_tokens=20).token_ids for p in PROMPTS]
    eos = Counter(t for ids in first for t in ids[2:]).most_common(1)[0][0]
    model = shutil.copytree(tiny_llama, tmp_path / "model")
    cfg = json.loads((model / "config.json").read_text())
    cfg["eos_token_id"] = [2, eos]
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "answers.jsonl"
    regenerate([prompts], out, RegenSettings(str(model), max_new_tokens=20, batch_size=batch_size))
    got = {r["id"]: r for r in rows(out)}  # batched rows come in generation order
    assert any(r["finish_reason"] == "stop" for r in got.values())
    for n, ids in enumerate(first):
        cut = next((i for i, t in enumerate(ids) if t in (2, eos)), None)
        assert got[f"gsm8k-{n}"]["finish_reason"] == ("length" if cut is None else "stop")
        if batch_size == 1:
            assert got[f"gsm8k-{n}"]["messages"][-1]["content"] == vanilla.tokenizer.decode(ids[:cut])


def test_skips_prompts_without_user_turn_or_too_long(tiny_llama, tmp_path, caplog):
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "system", "content": "only a system prompt"}]},
        {"messages": [{"role": "user", "content": "a" * 600}]},
        {"messages": [{"role": "user", "content": "short"}]},
    ]))  # fmt: skip
    out = tmp_path / "answers.jsonl"
    with caplog.at_level(logging.WARNING, logger="specblock.training.regen"):
        assert regenerate([prompts], out, RegenSettings(str(tiny_llama), max_new_tokens=4, batch_size=1)) == 1
    assert "without a user message" in caplog.text and "context" in caplog.text
    assert [r["id"] for r in rows(out)] == ["mixed-2"]


def test_temperature_mix_is_deterministic_with_the_design_frequencies(tiny_llama, prompt_files, tmp_path):
    ids = [f"conv-{i}" for i in range(20000)]
    draws = [draw_temperature(3, i) for i in ids]
    assert draws == [draw_temperature(3, i) for i in ids]
    assert draws != [draw_temperature(4, i) for i in ids]
    freq = Counter(draws)
    expected = {0.0: 0.4, 0.3: 0.1, 0.5: 0.1, 0.7: 0.1, 1.0: 0.3}
    assert set(freq) == set(expected)
    for t, p in expected.items():
        assert abs(freq[t] / len(ids) - p) < 0.015
    settings = {"target": str(tiny_llama), "max_new_tokens": 8, "batch_size": 1, "temperature_mix": True, "seed": 3}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    regenerate(prompt_files, a, RegenSettings(**settings))
    regenerate(prompt_files, b, RegenSettings(**settings))
    assert rows(a) == rows(b)
    assert all(r["temperature"] == draw_temperature(3, r["id"]) for r in rows(a))


def test_settings_are_validated():
    with pytest.raises(InvalidSettingError, match="max-new-tokens"):
        RegenSettings("x", max_new_tokens=0)
    with pytest.raises(InvalidSettingError, match="batch-size"):
        RegenSettings("x", batch_size=0)


def test_cli_data_regen(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "cli.jsonl"
    args = ["data", "regen", "--target", str(tiny_llama), "--prompts", str(prompt_files[0]), "--prompts",
            str(prompt_files[3]), "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 answers written" in result.output
    assert len(rows(out)) == 5
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 answers written" in again.output
    bad = CliRunner().invoke(app, [*args[:-1], "0"])
    assert bad.exit_code == 1 and "batch-size" in bad.output and "Traceback" not in bad.output
