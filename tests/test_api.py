"""The Python API and CLI on a tiny model directory: chat template, raw text, streaming, JSON, bad input."""

import json

import pytest
from typer.testing import CliRunner

from specblock import SpecGenerator
from specblock.cli import app
from specblock.errors import (
    ContextLengthError,
    InvalidSettingError,
    UnknownModelError,
    UnsupportedModelError,
)

from conftest import build_tiny_model


@pytest.fixture(scope="module")
def lookup_gen(tiny_llama):
    return SpecGenerator.load(str(tiny_llama), method="lookup", node_budget=8)


@pytest.fixture(scope="module")
def vanilla_gen(tiny_llama):
    return SpecGenerator.load(str(tiny_llama), method="vanilla")


def test_chat_prompt_system_and_messages_give_identical_ids(lookup_gen):
    tok = lookup_gen.tokenizer
    ids = tok.encode("hello there", system="be brief")
    same = tok.encode(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert ids == same
    assert tok.hf.decode(ids).endswith("<|im_start|>assistant\n")
    assert tok.encode("hello", raw=True) == [tok.hf.convert_tokens_to_ids(c) for c in "hello"]


def test_lookup_equals_vanilla_through_the_api(lookup_gen, vanilla_gen):
    for prompt in ["abc abc abc abc", "The cat sat on the mat. The cat", "x"]:
        a = vanilla_gen.generate(prompt, max_new_tokens=40)
        b = lookup_gen.generate(prompt, max_new_tokens=40)
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.tau == 1.0 and a.iterations == a.new_tokens
        assert b.tau == pytest.approx(b.new_tokens / b.iterations)


def test_stream_chunks_add_up_to_the_result(lookup_gen):
    stream = lookup_gen.stream("count: 1 2 3 1 2 3 1 2", max_new_tokens=30)
    chunks = list(stream)
    assert "".join(c.text for c in chunks) == stream.result.text
    assert [t for c in chunks for t in c.token_ids] == stream.result.token_ids
    assert stream.result.new_tokens == len(stream.result.token_ids)


def test_stop_string_cuts_where_vanilla_does(lookup_gen, vanilla_gen):
    free = vanilla_gen.generate("abc abc abc", max_new_tokens=40)
    text = free.text
    stop = text[10:12] if len(text) > 12 else text[-2:]
    a = vanilla_gen.generate("abc abc abc", max_new_tokens=40, stop=[stop])
    b = lookup_gen.generate("abc abc abc", max_new_tokens=40, stop=[stop])
    assert a.token_ids == b.token_ids
    assert a.stop_reason == b.stop_reason == "stop_string"
    assert stop in a.text and a.text.index(stop) + len(stop) >= len(a.text) - 1


def test_bad_inputs_fail_clearly(tiny_llama, lookup_gen, tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model"):
        SpecGenerator.load("no-such-model")
    with pytest.raises(InvalidSettingError, match="unknown method"):
        SpecGenerator.load(str(tiny_llama), method="telepathy")
    with pytest.raises(InvalidSettingError, match="dtype"):
        SpecGenerator.load(str(tiny_llama), dtype="float8")
    with pytest.raises(InvalidSettingError, match="temperature"):
        lookup_gen.generate("hi", temperature=-1)
    with pytest.raises(InvalidSettingError, match="top-p"):
        lookup_gen.generate("hi", top_p=0)
    with pytest.raises(InvalidSettingError, match="message 0 must"):
        lookup_gen.generate(messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(ContextLengthError, match="context"):
        lookup_gen.generate("a" * 600, raw=True)
    with pytest.raises(UnknownModelError, match="draft model"):
        SpecGenerator.load(str(tiny_llama), method="draft-model")


def test_corrupt_or_unsupported_checkpoints_fail_clearly(tiny_llama, tmp_path):
    broken = build_tiny_model(tmp_path / "broken", tokenizer=False)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UnsupportedModelError, match="cannot read"):
        SpecGenerator.load(str(broken))
    other = build_tiny_model(tmp_path / "gpt", tokenizer=False)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'gpt2'"):
        SpecGenerator.load(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedModelError, match="config.json"):
        SpecGenerator.load(str(empty))


def test_draft_model_method_with_explicit_draft(tiny_llama, tiny_draft_llama, vanilla_gen):
    gen = SpecGenerator.load(str(tiny_llama), method="draft-model", draft_model=str(tiny_draft_llama))
    a = gen.generate("hello hello", max_new_tokens=20)
    assert a.token_ids == vanilla_gen.generate("hello hello", max_new_tokens=20).token_ids
    assert a.drafter_forwards > 0


def test_cli_generate_json(tiny_llama):
    result = CliRunner().invoke(
        app, ["generate", "--target", str(tiny_llama), "--method", "lookup", "--prompt", "ab ab ab", "--max-new-tokens", "12", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ["token_ids", "text", "new_tokens", "iterations", "tau", "drafter_forwards", "wall_s", "tokens_per_s", "decode_tokens_per_s"]:
        assert key in data
    assert data["new_tokens"] == len(data["token_ids"]) == 12
    assert data["tau"] == pytest.approx(data["new_tokens"] / data["iterations"])


def test_cli_messages_file_and_errors(tiny_llama, tmp_path):
    msgs = tmp_path / "chat.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]))
    ok = CliRunner().invoke(app, ["generate", "--target", str(tiny_llama), "--messages", str(msgs), "--max-new-tokens", "5"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["generate", "--target", "nope", "--prompt", "x"])
    assert bad.exit_code == 1
    assert "unknown model 'nope'" in bad.output
    assert "Traceback" not in bad.output


def test_cli_models_list():
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]:
        assert name in result.output


def test_lookup_speculates_through_the_api(lookup_gen):
    r = lookup_gen.generate("abab abab abab abab abab", max_new_tokens=40, raw=True)
    assert r.tau > 1.0 and sum(r.accepted_lengths) > 0


def test_finish_after_partial_iteration_keeps_every_token(lookup_gen, vanilla_gen):
    stream = lookup_gen.stream("abc abc abc", max_new_tokens=30)
    first = next(iter(stream))
    result = stream.finish()
    assert result.token_ids[: len(first.token_ids)] == first.token_ids
    assert result.token_ids == vanilla_gen.generate("abc abc abc", max_new_tokens=30).token_ids
    assert result.new_tokens == len(result.token_ids)


def test_a_new_request_cancels_an_unfinished_stream(lookup_gen):
    old = lookup_gen.stream("abc abc", max_new_tokens=30)
    next(iter(old))
    lookup_gen.generate("xyz", max_new_tokens=5)
    with pytest.raises(InvalidSettingError, match="cancelled"):
        old.finish()


def test_input_ids_and_stop_string_arguments(lookup_gen, vanilla_gen):
    ids = lookup_gen.tokenizer.encode("hello")
    assert lookup_gen.generate(input_ids=ids, max_new_tokens=8).token_ids == vanilla_gen.generate("hello", max_new_tokens=8).token_ids
    for bad in ([1, 10**6], [1.5], [-1]):
        with pytest.raises(InvalidSettingError, match="input_ids"):
            lookup_gen.generate(input_ids=bad)
    with pytest.raises(InvalidSettingError, match="not both"):
        lookup_gen.generate("hi", input_ids=ids)
    text = vanilla_gen.generate("abc", max_new_tokens=30).text
    stop = text[5:8]
    as_str = vanilla_gen.generate("abc", max_new_tokens=30, stop=stop)
    as_list = vanilla_gen.generate("abc", max_new_tokens=30, stop=[stop])
    assert as_str.token_ids == as_list.token_ids and as_str.stop_reason == "stop_string"


def test_with_method_shares_the_loaded_target(vanilla_gen):
    lookup = vanilla_gen.with_method("lookup", node_budget=6)
    assert lookup.target is vanilla_gen.target and lookup.node_budget == 6
    prompt = "abc abc abc abc"
    assert lookup.generate(prompt, max_new_tokens=20).token_ids == vanilla_gen.generate(prompt, max_new_tokens=20).token_ids
    with pytest.raises(InvalidSettingError):
        vanilla_gen.with_method("nope")
