"""`specblock data regen` on the tiny random models: formats, the held-out split, exact batched
answers, multi-turn prompts, the recorded features, resume, the temperature mix, the CLI."""

import json
import shutil
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from conftest import exact_dtype
from specblock import SpecGenerator
from specblock.cli import app
from specblock.errors import InvalidSettingError, SpecBlockError
from specblock.models.resolve import resolve_model
from specblock.sampling import SamplingParams
from specblock.target.transformer import Transformer
from specblock.text import ChatTokenizer
from specblock.training.conversations import Conversation, is_heldout, read_conversations
from specblock.training.dataset import load_manifest, load_sequences
from specblock.training.regen import RegenSettings, draw_temperature, regenerate, select
from specblock.training.regen_engine import BatchedGeneration, GenerationRequest

PROMPTS = ["Hi there, who are you?", "Count: 1 2 3", "Write a poem about the sea.", "abc abc abc", "What is 7 times 8?"]


@pytest.fixture
def prompt_files(tmp_path):
    """The same kind of prompts in the four formats (ShareGPT as a JSON list and as JSONL)."""
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
    alpaca = tmp_path / "code_alpaca_2k.json"
    alpaca.write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                                  {"instruction": "Fix the code.", "input": "print x", "output": "print(x)"}]))  # fmt: skip
    return [ultra, share, share_lines, gsm, alpaca]


def rows(out):
    return [json.loads(line) for path in sorted(out.glob("answers-*.jsonl")) for line in path.read_text().splitlines()]


def settings(model, **kw):
    dtype = str(exact_dtype()).removeprefix("torch.")  # batched rows must equal solo ones in it
    return RegenSettings(str(model), **({"max_new_tokens": 8, "batch_size": 3, "dtype": dtype} | kw))


def test_the_four_formats_are_read(prompt_files):
    ultra, share, share_lines, gsm, alpaca = (read_conversations(p) for p in prompt_files)
    assert [c.id for c in ultra] == ["ultrachat-0", "ultrachat-1", "ultrachat-2"]
    assert ultra[0].first_user_turn() == [{"role": "user", "content": PROMPTS[0]}]
    assert ultra[0].user_turns() == [0, 2]
    assert [(c.id, c.source) for c in share] == [("sg0", "sharegpt"), ("sg1", "sharegpt")]
    assert share_lines[0].first_user_turn() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert [(c.id, c.source) for c in gsm] == [("gsm8k-0", "gsm8k"), ("gsm8k-1", "gsm8k")]
    # Alpaca: the instruction, then a blank line and the input when there is one; the output is not read
    assert [c.messages for c in alpaca] == [[{"role": "user", "content": "Add 2 and 3."}],
                                            [{"role": "user", "content": "Fix the code.\n\nprint x"}]]  # fmt: skip
    assert alpaca[0].source == "code_alpaca_2k"


def test_heldout_split_is_three_percent_of_each_source_and_stable():
    for source in ("gsm8k", "code_alpaca_2k"):
        held = [is_heldout(source, f"{source}-{i}") for i in range(20000)]
        assert abs(sum(held) / len(held) - 0.03) < 0.004
        assert held == [is_heldout(source, f"{source}-{i}") for i in range(20000)]
    assert [is_heldout("a", str(i)) for i in range(2000)] != [is_heldout("b", str(i)) for i in range(2000)]


def test_selection_interleaves_sources_and_caps_each(prompt_files):
    picked = select(prompt_files, settings("unused", max_per_source=2))
    assert [c.source for c in picked][:4] == ["ultrachat", "sharegpt", "gsm8k", "code_alpaca_2k"]
    assert Counter(c.source for c in picked) == {"ultrachat": 2, "sharegpt": 2, "gsm8k": 2, "code_alpaca_2k": 2}
    assert len(select(prompt_files, settings("unused", limit=3))) == 3


def test_output_is_ready_for_training(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "regen"
    seen = []
    written = regenerate(prompt_files, out, settings(tiny_llama),
                         report=lambda stage, done, total, info="": seen.append((done, total)))  # fmt: skip
    got = rows(out)
    assert written == len(got) == 10 and sorted(r["id"] for r in got) == sorted(
        c.id for c in select(prompt_files, settings(tiny_llama))
    )
    for r in got:
        assert list(r) == ["id", "source", "messages", "finish_reason", "temperature", "turns", "split"]
        assert r["finish_reason"] in ("stop", "length") and r["temperature"] == 0.0
        assert r["messages"][-1]["role"] == "assistant"
    ultra = [r for r in got if r["source"] == "ultrachat"]
    assert all(r["turns"] == 2 and [m["role"] for m in r["messages"]] == ["user", "assistant"] * 2 for r in ultra)
    assert all(r["messages"][1]["content"] != "old answer" for r in ultra)  # the target's own answer
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    manifest = load_manifest(out)
    assert manifest["conversations"] == 10 and manifest["draft_vocab_size"] > 1
    sequences = [*load_sequences(out, "train"), *load_sequences(out, "heldout")]
    assert len(sequences) == 10
    assert [c.id for c in read_conversations(out)] == [r["id"] for r in got]  # `data prepare` reads it too


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_batched_answers_equal_solo_greedy_decoding_every_turn(tiny_llama, prompt_files, tmp_path, dtype):
    """Batch 4 with continuous batching gives each turn exactly the target's own greedy answer.
    In bf16 only the first turns are held to the bit: a later turn prefills just its new tokens
    after the earlier turn's cache, and a chunked prefill may part from a whole-prompt one at a
    near-tie in bf16 (it does on this model). Where no bf16 product is row-invariant (the kernel
    table), a batch is not bit-exact in bf16 at all, so only fp32 is held to it there."""
    if dtype == "bfloat16" and exact_dtype() != torch.bfloat16:
        pytest.skip("this CPU gives no row-invariant bf16 product, so batched bf16 is not exact here")
    out = tmp_path / "regen"
    regenerate(prompt_files, out, settings(tiny_llama, max_new_tokens=30, batch_size=4, dtype=dtype))
    generator = SpecGenerator.load(str(tiny_llama), method="vanilla", dtype=dtype)
    turns = 0
    for r in rows(out):
        answers = [i for i, m in enumerate(r["messages"]) if m["role"] == "assistant"]
        for i in answers[:1] if dtype == "bfloat16" else answers:
            ref = generator.generate(messages=r["messages"][:i], max_new_tokens=30)
            assert r["messages"][i]["content"] == ref.text, (r["id"], i)
            turns += 1
        if dtype == "float32":
            last = generator.generate(messages=r["messages"][:-1], max_new_tokens=30)
            assert r["finish_reason"] == ("stop" if last.stop_reason == "eos" else "length")
    assert turns == (10 if dtype == "bfloat16" else 13)  # 3 conversations with two turns


def test_recorded_features_and_topk_are_the_targets_on_the_kept_tokens(tiny_qwen2, prompt_files, tmp_path):
    """Each stored token row carries the target's features after it and its next-token top-k, as a
    fresh fp32 forward over the whole conversation gives them (the 2-turn ones included)."""
    out = tmp_path / "regen"
    regenerate(prompt_files, out, settings(tiny_qwen2, max_new_tokens=12, dtype="float32", batch_size=2))
    model = Transformer.load(resolve_model(str(tiny_qwen2)))
    tok = ChatTokenizer.load(resolve_model(str(tiny_qwen2)))
    seqs = {s: load_sequences(out, s) for s in ("train", "heldout")}
    by_split = {
        "train": [r for r in rows(out) if r["split"] == "train"],
        "heldout": [r for r in rows(out) if r["split"] == "heldout"],
    }
    checked = 0
    for split, split_rows in by_split.items():
        for row, seq in zip(split_rows, seqs[split]):
            conv = Conversation(row["id"], row["source"], row["messages"], {"finish_reason": row["finish_reason"]})
            n = seq.tokens.numel()
            # the answer mask: one run of ones per turn, the last one the generated tokens
            mask = "".join("1" if m else "0" for m in seq.answer_mask.tolist())
            runs = [len(r) for r in mask.split("0") if r]
            assert len(runs) == row["turns"] and mask.endswith("1") and all(r <= 13 for r in runs)
            first_prompt = tok.encode(messages=conv.first_user_turn())
            ids = first_prompt[: max(0, len(first_prompt) - 128)] + seq.tokens.tolist()  # what the engine saw
            full = model.forward(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)), 0, capture=True)
            torch.testing.assert_close(seq.features[:-1].float(), full.features[-n:-1], atol=0.05, rtol=0.02)
            logprobs = torch.log_softmax(model.logits(full.hidden[-n:]), dim=-1)
            trained = torch.nonzero(seq.answer_mask[1:]).flatten()  # positions whose next token is an answer token
            assert trained.numel() == sum(runs) - (mask[0] == "1")
            assert (logprobs[trained].argmax(-1) == seq.topk_ids[trained, 0]).all()
            got = seq.topk_logprobs[trained].float()
            torch.testing.assert_close(got, logprobs[trained].gather(1, seq.topk_ids[trained]), atol=2e-2, rtol=0)
            checked += row["turns"]
    assert checked == 13


def test_resume_after_a_kill_and_refuse_other_settings(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "regen"
    assert regenerate(prompt_files, out, settings(tiny_llama, limit=4, shard_size=2)) == 4
    assert regenerate(prompt_files, out, settings(tiny_llama, shard_size=2)) == 6
    full = rows(out)
    assert len({r["id"] for r in full}) == len(full) == 10
    assert regenerate(prompt_files, out, settings(tiny_llama, shard_size=2)) == 0
    # a kill between a flush's shards and its answers file: that flush is redone
    last = sorted(out.glob("answers-*.jsonl"))[-1]
    lost = {json.loads(line)["id"] for line in last.read_text().splitlines()}
    last.unlink()
    (out / "manifest.json").unlink()
    assert regenerate(prompt_files, out, settings(tiny_llama, shard_size=2)) == len(lost)
    assert sorted(map(json.dumps, rows(out))) == sorted(map(json.dumps, full))  # greedy: the same rows again
    with pytest.raises(SpecBlockError, match="max_new_tokens differ"):
        regenerate(prompt_files, out, settings(tiny_llama, max_new_tokens=9))


def test_answers_stop_at_eos(tiny_llama, tmp_path):
    """A model whose config also names a frequent character as EOS: answers end there, without it."""
    vanilla = SpecGenerator.load(str(tiny_llama), method="vanilla", dtype=str(exact_dtype()).removeprefix("torch."))
    prompts = tmp_path / "gsm8k.jsonl"
    prompts.write_text("".join(json.dumps({"question": p}) + "\n" for p in PROMPTS))
    first = [vanilla.generate(p, max_new_tokens=20).token_ids for p in PROMPTS]
    eos = Counter(t for ids in first for t in ids[2:]).most_common(1)[0][0]
    model = shutil.copytree(tiny_llama, tmp_path / "model")
    cfg = json.loads((model / "config.json").read_text())
    cfg["eos_token_id"] = [2, eos]
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "regen"
    regenerate([prompts], out, settings(model, max_new_tokens=20))
    got = {r["id"]: r for r in rows(out)}
    assert any(r["finish_reason"] == "stop" for r in got.values())
    for n, ids in enumerate(first):
        cut = next((i for i, t in enumerate(ids) if t in (2, eos)), None)
        assert got[f"gsm8k-{n}"]["finish_reason"] == ("length" if cut is None else "stop")
        assert got[f"gsm8k-{n}"]["messages"][-1]["content"] == vanilla.tokenizer.decode(ids[:cut])


def test_engine_takes_work_that_arrives_while_it_runs(tiny_llama):
    """`next_request` is asked again whenever a slot frees: a follow-up made from a finished
    result still runs, and a request whose first token ends it frees its slot at once."""
    model = Transformer.load(tiny_llama, torch.bfloat16)
    engine = BatchedGeneration(model, max_batch=2, slot_capacity=80, eos_ids=[2])
    queue = [GenerationRequest(i, [5 + i, 9, 12], 6, SamplingParams()) for i in range(3)]
    results = []
    for result in engine.run(lambda: queue.pop(0) if queue else None):
        results.append(result)
        if result.key == 0:
            queue.append(GenerationRequest("follow-up", result.prompt + result.tokens, 4, SamplingParams()))
    assert sorted(map(str, (r.key for r in results))) == ["0", "1", "2", "follow-up"]
    for r in results:
        assert r.features.shape[0] == r.topk_ids.shape[0] == len(r.prompt) + len(r.tokens)
    with pytest.raises(ValueError, match="does not fit"):
        list(engine.run(iter([GenerationRequest(9, list(range(3, 70)), 20, SamplingParams())]).__next__))


def test_skips_prompts_without_user_turn_or_too_long(tiny_llama, tmp_path, caplog):
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "system", "content": "only a system prompt"}]},
        {"messages": [{"role": "user", "content": "a" * 600}]},
        {"messages": [{"role": "user", "content": "short"}]},
    ]))  # fmt: skip
    out = tmp_path / "regen"
    with caplog.at_level("WARNING", logger="specblock.training.regen"):
        assert regenerate([prompts], out, settings(tiny_llama)) == 1
    assert "without a user message" in caplog.text and "longer than" in caplog.text
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
    a, b = tmp_path / "a", tmp_path / "b"
    regenerate(prompt_files, a, settings(tiny_llama, temperature_mix=True, seed=3, batch_size=4))
    regenerate(prompt_files, b, settings(tiny_llama, temperature_mix=True, seed=3, batch_size=1))
    by_id = {r["id"]: r for r in rows(b)}
    assert all(by_id[r["id"]] == r for r in rows(a))  # seeded draws do not depend on the batch
    assert all(r["temperature"] == draw_temperature(3, r["id"]) for r in rows(a))


def test_settings_are_validated():
    with pytest.raises(InvalidSettingError, match="max-new-tokens"):
        RegenSettings("x", max_new_tokens=0)
    with pytest.raises(InvalidSettingError, match="batch-size"):
        RegenSettings("x", batch_size=0)
    with pytest.raises(InvalidSettingError, match="top-k"):
        RegenSettings("x", top_k=5)


def test_cli_data_regen(tiny_llama, prompt_files, tmp_path):
    out = tmp_path / "cli"
    args = ["data", "regen", "--target", str(tiny_llama), "--prompts", str(prompt_files[0]), "--prompts",
            str(prompt_files[3]), "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 conversations written" in result.output and "tok/s" in result.output
    assert len(rows(out)) == 5
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 conversations written" in again.output
    bad = CliRunner().invoke(app, [*args[:-1], "0"])
    assert bad.exit_code == 1 and "batch-size" in bad.output and "Traceback" not in bad.output


def test_heldout_questions_mix_the_sources_and_feed_the_bench(tmp_path):
    from specblock.bench.prompts import read_questions

    out = tmp_path / "regen"
    out.mkdir()

    def row(i, source, split):
        messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"},
                    {"role": "user", "content": f"more {i}"}, {"role": "assistant", "content": "b"}]  # fmt: skip
        return json.dumps({"id": f"{source}-{i}", "source": source, "messages": messages, "split": split}) + "\n"

    first = row(0, "gsm8k", "heldout") + row(1, "gsm8k", "train") + row(2, "gsm8k", "heldout")
    (out / "answers-00000.jsonl").write_text(first)
    second = row(3, "code", "heldout") + row(4, "gsm8k", "heldout") + row(5, "code", "heldout")
    (out / "answers-00001.jsonl").write_text(second)
    questions = tmp_path / "q" / "heldout.jsonl"
    args = ["data", "heldout-questions", "--data", str(out), "--out", str(questions), "--max-turns", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = read_questions(questions)
    assert [(q.question_id, q.category) for q in got] == [  # one source after another, then the rest
        ("code-3", "code"), ("gsm8k-0", "gsm8k"), ("code-5", "code"), ("gsm8k-2", "gsm8k"), ("gsm8k-4", "gsm8k"),
    ]  # fmt: skip
    assert got[0].turns == ("q3", "more 3")
    result = CliRunner().invoke(app, [*args, "--sources", "gsm8k", "--per-source", "2", "--max-turns", "1"])
    assert result.exit_code == 0, result.output
    assert [(q.question_id, q.turns) for q in read_questions(questions)] == [("gsm8k-0", ("q0",)), ("gsm8k-2", ("q2",))]
    missing = CliRunner().invoke(app, [*args, "--sources", "ultrachat"])
    assert missing.exit_code == 1 and "no held-out conversations of ultrachat" in missing.output
    empty = CliRunner().invoke(app, [*args, "--sources", ","])
    assert empty.exit_code == 1 and "names no source" in empty.output
    (out / "answers-00002.jsonl").write_text("not json\n")
    broken = CliRunner().invoke(app, args)
    assert broken.exit_code == 1 and "answers-00002.jsonl:1: not a regenerated-answer row" in broken.output


def test_a_follow_up_reuses_its_slots_cache_and_records(tiny_qwen2):
    """A follow-up whose prompt extends a finished request runs in that request's slot and
    prefills only its new tokens (from the first asked-for row whose top-k the earlier request
    did not compute, if that comes sooner); its tokens, features and asked-for top-k equal
    those of the same request in a fresh engine (which runs the whole prompt). A prompt
    sharing nothing reuses nothing."""
    model = Transformer.load(tiny_qwen2)  # fp32
    engine = BatchedGeneration(model, max_batch=2, slot_capacity=120, eos_ids=[])
    queue = [GenerationRequest(i, [5 + i, 9, 12, 7], 6, SamplingParams(), [1] if i == 0 else [1, 2]) for i in range(2)]
    asked = [1, 2, 5, 6, 8]  # rows over both turns; request 0 did not compute row 2
    follow_ups, results = {}, {}
    for result in engine.run(lambda: queue.pop(0) if queue else None):
        results[result.key] = result
        if result.key in (0, 1):  # its prompt + answer, then a new "user message"
            follow_ups[result.key] = GenerationRequest(("then", result.key), result.prompt + result.tokens + [30, 31, 32], 5, SamplingParams(), asked)  # fmt: skip
            queue.insert(0, follow_ups[result.key])  # as `regen` does: the last one first, so not in slot order
    # request 1's slot held its prompt and all new tokens but the last (9); request 0's up to row 2
    assert engine.reused == 9 + 2
    assert engine.prefilled == 4 + 4 + (13 - 9) + (13 - 2)
    for key, request in follow_ups.items():
        fresh = BatchedGeneration(model, max_batch=1, slot_capacity=120, eos_ids=[])
        ref = next(fresh.run(iter([request]).__next__))
        got = results[("then", key)]
        assert fresh.reused == 0 and got.tokens == ref.tokens
        torch.testing.assert_close(got.features, ref.features, atol=1e-4, rtol=1e-4)
        rows = [*asked, len(ref.prompt) - 1, *range(len(ref.prompt), len(ref.prompt) + 4)]
        assert (got.topk_ids[rows] == ref.topk_ids[rows]).all()
        torch.testing.assert_close(got.topk_logprobs[rows], ref.topk_logprobs[rows], atol=1e-4, rtol=1e-4)
        assert (got.topk_logprobs[[0, 3, 4]] == ref.topk_logprobs[[0, 3, 4]]).all()  # rows not asked stay empty
    before = engine.reused
    other = [GenerationRequest("other", [40, 41, 42], 2, SamplingParams())]
    (done,) = engine.run(lambda: other.pop() if other else None)
    assert engine.reused == before
    # a prompt that is exactly what a slot holds: its last token must run, so it prefills whole
    again = [GenerationRequest("again", done.prompt + done.tokens[:-1], 2, SamplingParams())]
    assert len(list(engine.run(lambda: again.pop() if again else None))) == 1 and engine.reused == before


def test_heldout_questions_from_a_prompt_file_are_the_hash_split(tmp_path):
    """A prompt file gives its held-out prompts (the (source, id) hash), none trained on."""
    from specblock.bench.prompts import read_questions

    prompts = tmp_path / "code_alpaca_tiny.json"
    rows = [{"instruction": f"task {i}", "input": "x" if i % 2 else "", "output": "ignored"} for i in range(400)]
    prompts.write_text(json.dumps(rows))
    held = [i for i in range(400) if is_heldout("code_alpaca_tiny", f"code_alpaca_tiny-{i}")]
    assert 3 <= len(held) < 40  # about 3% of 400
    questions = tmp_path / "heldout.jsonl"
    args = ["data", "heldout-questions", "--data", str(prompts), "--out", str(questions), "--per-source", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = read_questions(questions)
    assert [q.question_id for q in got] == [f"code_alpaca_tiny-{i}" for i in held[:3]]
    assert got[1].turns == (f"task {held[1]}" + ("\n\nx" if held[1] % 2 else ""),)
    # two files: their sources in turn, and an id met twice (the same file again) taken once
    gsm = tmp_path / "gsm8k_tiny.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"sum {i}"}) + "\n" for i in range(400)))
    held_gsm = [i for i in range(400) if is_heldout("gsm8k", f"gsm8k-{i}")]
    both = ["data", "heldout-questions", "--data", str(prompts), "--data", str(gsm), "--data", str(prompts),
            "--out", str(questions)]  # fmt: skip
    result = CliRunner().invoke(app, both)
    assert result.exit_code == 0, result.output
    got = [q.question_id for q in read_questions(questions)]
    assert len(got) == len(held) + len(held_gsm)  # the repeated file added nothing
    assert got[:4] == [
        f"code_alpaca_tiny-{held[0]}", f"gsm8k-{held_gsm[0]}", f"code_alpaca_tiny-{held[1]}", f"gsm8k-{held_gsm[1]}",
    ]  # fmt: skip
    missing = CliRunner().invoke(app, ["data", "heldout-questions", "--data", str(tmp_path / "nope.json"), "--out", str(questions)])
    assert missing.exit_code == 1 and "no such data file" in missing.output and "Traceback" not in missing.output
