"""`specblock serve` over real HTTP on a loopback port: the official openai client, streaming,
concurrent requests equal to their solo outputs, disconnects, every error case, a bounded
load test and a clean SIGTERM."""

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from specblock import SpecGenerator

from conftest import exact_dtype
from helpers import held_iterations
from server_helpers import free_port, running_server

PROMPTS = ["abc abc abc", "The cat sat on the mat. The cat", "hello there", "x", "one two one two one",
           "Why? Because.", "aaa bbb aaa", "Numbers: 1 2 3 1 2 3"]  # fmt: skip
LENGTHS = [30, 55, 12, 70, 25, 40, 64, 18]


@pytest.fixture(scope="module")
def gen(tiny_llama):
    # where bf16 is not batch-invariant (the kernel table), fp32: a batched answer must equal its solo one
    return SpecGenerator.load(str(tiny_llama), method="lookup", node_budget=8, dtype=str(exact_dtype()).removeprefix("torch."))


@pytest.fixture(scope="module")
def expected(gen):
    """Each prompt's greedy chat answer decoded alone (the reference for the server)."""
    solo = gen.with_method("lookup", node_budget=8)
    return [solo.generate(messages=[{"role": "user", "content": p}], max_new_tokens=n) for p, n in zip(PROMPTS, LENGTHS)]


@pytest.fixture(scope="module")
def served(gen, expected):
    with running_server(gen, max_batch=4, queue_size=16, api_key=None) as (url, server):
        yield url, server


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat(c: openai.OpenAI, i: int, **kw):
    return c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPTS[i]}],
                                     max_tokens=LENGTHS[i], temperature=0, **kw)  # fmt: skip


def test_openai_client_chat_stream_and_not(served, expected):
    url, _ = served
    c = client(url)
    r = chat(c, 1)
    want = expected[1]
    assert r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == want.new_tokens and r.usage.prompt_tokens == want.prompt_tokens
    assert r.choices[0].finish_reason == ("length" if want.stop_reason == "length" else "stop")
    extra = r.model_extra["specblock"]
    assert extra["method"] == "lookup" and extra["tau"] == pytest.approx(want.tau, abs=1e-3)
    assert extra["accepted_lengths"] == want.accepted_lengths
    chunks = list(chat(c, 1, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == want.new_tokens
    with_usage = list(chat(c, 1, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == want.new_tokens
    origins = {p["origin"] for ch in chunks for p in (ch.model_extra.get("specblock") or {}).get("pieces", [])}
    assert "target" in origins


def test_completions_endpoint_uses_raw_text(served, gen):
    url, _ = served
    want = gen.with_method("lookup", node_budget=8).generate("abc abc abc abc", raw=True, max_new_tokens=20)
    r = client(url).completions.create(model="tiny", prompt="abc abc abc abc", max_tokens=20, temperature=0)
    assert r.choices[0].text == want.text and r.object == "text_completion"
    streamed = client(url).completions.create(model="tiny", prompt="abc abc abc abc", max_tokens=20, temperature=0,
                                              stream=True)  # fmt: skip
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == want.text


def test_eight_concurrent_clients_each_get_their_solo_output(served, expected):
    url, server = served
    before = server.scheduler.counters.batch_size_sum, server.scheduler.counters.iterations

    def ask(i):
        c = client(url)
        if i % 2:
            return "".join(ch.choices[0].delta.content or "" for ch in chat(c, i, stream=True) if ch.choices)
        return chat(c, i).choices[0].message.content

    with cf.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(8)))
    assert texts == [e.text for e in expected]
    shared = server.scheduler.counters.batch_size_sum - before[0]
    forwards = server.scheduler.counters.iterations - before[1]
    assert shared > forwards  # trees of several requests went through one target forward


def test_stop_strings_are_left_out_of_the_text(served, expected):
    url, _ = served
    i = max(range(len(PROMPTS)), key=lambda j: len(expected[j].text))
    full = expected[i].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2
    messages = [{"role": "user", "content": PROMPTS[i]}]
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=LENGTHS[i], temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = c.chat.completions.create(model="tiny", messages=messages, max_tokens=LENGTHS[i], temperature=0,
                                         stop=stop, stream=True)  # fmt: skip
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == r.choices[0].message.content


def test_seeded_sampling_repeats(served):
    url, _ = served
    c = client(url)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=30, temperature=0.8, top_p=0.9)
    a = c.chat.completions.create(seed=7, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=7, **kw).choices[0].message.content
    assert a == b


def _health(url):
    return httpx.get(url + "/health", timeout=10).json()


def test_disconnect_mid_stream_frees_the_slot(served):
    url, server = served
    cancelled = server.metrics.requests["cancelled"]
    dropped = server.scheduler.counters.cancelled  # counted by the engine when it frees the slot
    body = {"model": "tiny", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 400, "temperature": 0,
            "stream": True}  # fmt: skip
    with held_iterations(server.scheduler):  # until the server saw the disconnect
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            next(lines)
        deadline = time.monotonic() + 10
        while server.metrics.requests["cancelled"] == cancelled:
            assert time.monotonic() < deadline, "the server did not notice the disconnect"
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while _health(url)["active"] or server.metrics.requests["cancelled"] == cancelled or server.scheduler.counters.cancelled == dropped:
        assert time.monotonic() < deadline, "the disconnected request still holds its slot"
        time.sleep(0.02)
    assert chat(client(url), 2).choices[0].message.content  # still serving


def test_metrics_are_prometheus_text(served):
    url, _ = served
    chat(client(url), 0)
    text = httpx.get(url + "/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['specblock_requests_total{outcome="completed"}'] >= 1
    buckets = [v for k, v in samples.items() if k.startswith("specblock_tau_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == samples["specblock_tau_count"]
    for name in ("specblock_drafter_seconds_total", "specblock_target_seconds_total", "specblock_queue_depth",
                 "specblock_generated_tokens_total"):  # fmt: skip
        assert name in samples


def test_web_view_and_models(served):
    url, _ = served
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and "specblock · tiny" in page.text and "/v1/chat/completions" in page.text
    assert [m.id for m in client(url).models.list()] == ["tiny"]


GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ("{not json", 400, "not valid JSON"),
        ({**GOOD, "colour": "red"}, 422, "colour"),
        ({**GOOD, "messages": []}, 422, "messages"),
        ({**GOOD, "messages": [{"role": "robot", "content": "x"}]}, 422, "role"),
        ({**GOOD, "model": "gpt-9"}, 404, "gpt-9"),
        ({**GOOD, "messages": [{"role": "user", "content": "x" * 600}]}, 400, "context holds 512"),
        ({**GOOD, "temperature": -1}, 400, "temperature"),
        ({**GOOD, "top_p": 0}, 400, "top-p"),
        ({**GOOD, "top_k": -3}, 400, "top-k"),
        ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ({**GOOD, "n": 2}, 400, "n=2"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({**GOOD, "frequency_penalty": 0.5}, 400, "not supported"),
        ({**GOOD, "temperature": "hot"}, 422, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(served, body, status, needle):
    url, _ = served
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"]
    assert httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=30).status_code == 200


def test_api_key(gen):
    with running_server(gen, api_key="s3cret") as (url, _):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            r = httpx.post(url + "/v1/chat/completions", json=GOOD, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert chat(client(url, "s3cret"), 2).choices[0].message.content is not None
        with pytest.raises(openai.AuthenticationError):
            chat(client(url, "nope"), 2)
        assert httpx.get(url + "/health", timeout=10).status_code == 200  # health stays open for probes


def test_full_queue_is_503_with_retry_after_and_timeouts_are_504(gen):
    with running_server(gen, max_batch=1, queue_size=0, request_timeout_s=30) as (url, server):
        body = {**GOOD, "max_tokens": 450, "stream": True, "messages": [{"role": "user", "content": "abc"}]}  # no EOS
        with held_iterations(server.scheduler) as release, httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, timeout=30
        ) as response:  # the request runs, without iterating, until the busy one is answered
            lines = response.iter_lines()
            next(lines), next(lines)  # the opening chunk, then the first token (from the prefill)
            busy = httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=10)
            release.set()
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["error"]["message"]
            for _ in lines:
                pass
        server.config.request_timeout_s = 0.0  # expired at the engine's first look, however fast the machine
        late = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert late.status_code == 504 and "timeout" in late.json()["error"]["message"]
        assert server.metrics.requests["rejected"] >= 1 and server.metrics.requests["timeout"] == 1


def test_bounded_load_every_request_answered_or_refused_once(gen, expected):
    n_requests, n_clients = 32, 8
    with running_server(gen, max_batch=2, queue_size=2) as (url, server):
        def one(k):
            i = k % len(PROMPTS)
            r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
                "model": "tiny", "messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": LENGTHS[i],
                "temperature": 0, "user": f"request-{k}"})  # fmt: skip
            return k, r.status_code, r.json()

        with cf.ThreadPoolExecutor(n_clients) as pool:
            results = list(pool.map(one, range(n_requests)))
        assert sorted(k for k, _, _ in results) == list(range(n_requests))
        ok = [(k, body) for k, status, body in results if status == 200]
        refused = [k for k, status, _ in results if status == 503]
        assert len(ok) + len(refused) == n_requests and ok
        for k, body in ok:
            assert body["choices"][0]["message"]["content"] == expected[k % len(PROMPTS)].text
        assert len({body["id"] for _, body in ok}) == len(ok)  # no answer delivered twice
        assert server.metrics.requests["completed"] == len(ok) and server.metrics.requests["rejected"] == len(refused)
        health = _health(url)
        assert health["status"] == "ok" and health["active"] == 0 and health["queue"] == 0


def test_sigterm_lets_the_in_flight_stream_finish(tiny_llama, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "specblock.cli", "serve", "--target", str(tiny_llama), "--method", "lookup",
           "--port", str(port), "--served-model-name", "tiny", "--shutdown-grace", "20"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        body = {**GOOD, "max_tokens": 300, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason": "' in rest[-2]
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert "shut down (1 requests completed, 0 cancelled" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.parametrize("args, needle", [(["--max-batch", "0"], "--max-batch"), (["--port", "70000"], "--port"),
                                          (["--method", "nope"], "unknown method")])  # fmt: skip
def test_serve_refuses_bad_options_in_one_line(tiny_llama, args, needle):
    from typer.testing import CliRunner

    from specblock.cli import app

    result = CliRunner().invoke(app, ["serve", "--target", str(tiny_llama), "--method", "lookup", *args])
    assert result.exit_code == 1 and needle in result.output
