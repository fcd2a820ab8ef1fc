"""Batched speculative decoding (serving.scheduler): one target forward verifies several
requests' trees, and every request's tokens equal what it gets decoding alone."""

import threading
import time

import pytest
import torch

from specblock.decoding import DecodeSettings
from specblock.drafters.lookup import LookupDrafter
from specblock.drafters.specblock import SpecBlockDrafter
from specblock.drafters.vanilla import VanillaDrafter
from specblock.sampling import SamplingParams
from specblock.serving.scheduler import BatchScheduler, Failed, Finished, Job, QueueFullError, Tokens
from specblock.target.runner import TargetRunner, verify_batch
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree

from conftest import exact_dtype
from helpers import held_iterations, run_decode
from neural_helpers import random_specblock
from test_decoding import prompts


class Collector:
    """A job's sink: gathers the engine's events and says when the request ended."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.drafted = 0
        self.end: Finished | Failed | None = None
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Tokens):
            self.tokens += event.tokens
            self.drafted += event.drafted
        else:
            self.end = event
            self.done.set()


def run_batched(model, drafter, requests, max_batch=4, queue=16):
    """Submit every (prompt, settings) at once; returns each request's Collector."""
    scheduler = BatchScheduler(model, drafter, decode=lambda ids: "", max_batch=max_batch, queue_size=queue)
    scheduler.start()
    sinks = [Collector() for _ in requests]
    try:
        for (prompt, settings), sink in zip(requests, sinks):
            scheduler.submit(Job(prompt, settings, sink, timeout_s=120))
        for sink in sinks:
            assert sink.done.wait(120), "a request never finished"
    finally:
        scheduler.stop()
    return sinks, scheduler


def _tree(tokens_and_parents):
    tree = DraftTree()
    for token, parent in tokens_and_parents:
        tree.add(token, parent)
    return tree


@pytest.mark.parametrize("pooled, one_call", [(True, True), (True, False), (False, False)],
                         ids=["one-pool", "one-pool-call-per-request", "own-caches"])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_batch_rows_equal_each_request_verified_alone(tiny_llama, dtype, pooled, one_call, monkeypatch):
    from specblock.target import transformer

    if not one_call:  # past the size limit, the pooled batch attends one request per call
        monkeypatch.setattr(transformer, "BATCHED_GRID_BYTES", 0)
    model = Transformer.load(tiny_llama, dtype)
    trees = [_tree([(5, -1), (6, 0), (7, -1)]), DraftTree(), _tree([(9, -1), (10, 0), (11, 1), (12, 1)])]
    roots = [3, 4, 8]
    contexts = [(prompts(1, seed=s)[0] * 40)[: 20 + 17 * s] for s in range(3)]  # 20, 37, 54: two cross a chunk

    def fresh_runners(pool=False):
        runners = []
        caches = model.new_cache_pool(3, 96) if pool else [None] * 3
        for ctx, cache in zip(contexts, caches):
            runner = TargetRunner(model, cache)
            runner.prefill(ctx, len(ctx) + 16, capture=True)
            runners.append(runner)
        return runners

    alone = [r.verify(root, tree, capture=True) for r, root, tree in zip(fresh_runners(), roots, trees)]
    together_runners = fresh_runners(pool=pooled)
    together = verify_batch(together_runners, roots, trees, capture=True)
    for a, b in zip(alone, together):
        if model.batch_invariant:
            assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
        else:  # products not row-invariant on this CPU: equal up to rounding
            torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0.05 if dtype == torch.bfloat16 else 1e-4)
    assert [r.forwards for r in together_runners] == [2, 2, 2]
    # each request's keys/values went to its own cache: the next verify of each agrees too
    for runner in together_runners:
        runner.commit([0])
    again = verify_batch(together_runners, [1, 1, 1], [DraftTree()] * 3, capture=False)
    solo = fresh_runners()
    for runner, root, tree in zip(solo, roots, trees):
        runner.verify(root, tree, capture=False)
        runner.commit([0])
    for a, runner in zip(again, solo):
        b = runner.verify(1, DraftTree(), capture=False).logits
        if model.batch_invariant:
            assert torch.equal(a.logits, b)
        else:
            torch.testing.assert_close(a.logits, b, rtol=0, atol=1e-4 if dtype == torch.float32 else 0.05)


def _requests(vocab_eos=2):
    """8 requests: different prompts and lengths; greedy, and seeded sampling."""
    out = []
    for i, prompt in enumerate(prompts(8, seed=21)):
        sampling = SamplingParams() if i % 3 else SamplingParams(temperature=0.9, top_k=20, seed=100 + i)
        out.append((prompt, DecodeSettings(max_new_tokens=12 + 9 * i, sampling=sampling, node_budget=6)))
    return out


@pytest.mark.parametrize("method", ["vanilla", "lookup", "specblock"])
def test_eight_batched_requests_each_equal_their_solo_output(tiny_llama, method):
    model = Transformer.load(tiny_llama, exact_dtype())
    batched_calls = []
    if method == "specblock":
        net = random_specblock(model).to(model.dtype)
        real_blocks = net.blocks
        net.blocks = lambda *a, **kw: batched_calls.append(kw.get("caches") is not None) or real_blocks(*a, **kw)
        drafter = SpecBlockDrafter(net)
    else:
        drafter = VanillaDrafter() if method == "vanilla" else LookupDrafter()
    requests = _requests()
    sinks, scheduler = run_batched(model, drafter, requests, max_batch=4)
    assert scheduler.counters.batch_size_sum > scheduler.counters.iterations  # requests did share forwards
    if method == "specblock":
        assert any(batched_calls)  # greedy requests drafted block 1 together
    for (prompt, settings), sink in zip(requests, sinks):
        assert isinstance(sink.end, Finished), sink.end
        want, stats = run_decode(model, drafter.fork(), prompt, max_new_tokens=settings.max_new_tokens,
                                 sampling=settings.sampling, node_budget=settings.node_budget)  # fmt: skip
        if model.batch_invariant or settings.sampling.greedy:
            assert sink.tokens == want
        assert sink.end.stats.new_tokens == len(sink.tokens)
        assert sink.drafted == sum(sink.end.stats.accepted_lengths)
        assert max(sink.end.batch_sizes) > 1


def test_greedy_batched_equals_plain_decoding_in_fp32(tiny_qwen2):
    model = Transformer.load(tiny_qwen2)
    requests = [r for r in _requests() if r[1].sampling.greedy]
    sinks, _ = run_batched(model, LookupDrafter(), requests, max_batch=3)
    for (prompt, settings), sink in zip(requests, sinks):
        want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=settings.max_new_tokens)
        assert sink.tokens == want


def test_cancelled_job_frees_its_slot_and_others_finish(tiny_llama):
    model = Transformer.load(tiny_llama)
    scheduler = BatchScheduler(model, VanillaDrafter(), decode=lambda ids: "", max_batch=1, queue_size=1)
    scheduler.start()
    try:
        with held_iterations(scheduler) as release:  # no iteration before the cancel
            long, short = Collector(), Collector()
            settings = DecodeSettings(max_new_tokens=400, node_budget=0)
            job = scheduler.submit(Job(prompts(1, seed=3)[0], settings, long, timeout_s=60))
            scheduler.submit(Job(prompts(1, seed=4)[0], DecodeSettings(max_new_tokens=5), short, timeout_s=60))
            with pytest.raises(QueueFullError):  # 1 running + 1 waiting
                scheduler.submit(Job([1, 2], DecodeSettings(max_new_tokens=5), Collector(), timeout_s=60))
            while not long.tokens:
                time.sleep(0.001)
            job.cancel()
            release.set()
            assert short.done.wait(30) and isinstance(short.end, Finished)
            assert not long.done.is_set() and len(long.tokens) < 400  # no event after the cancel: the client is gone
            assert scheduler.active == 0 and scheduler.queue_depth == 0
    finally:
        scheduler.stop()


def test_timeout_and_shutdown_fail_requests_with_their_reason(tiny_llama):
    model = Transformer.load(tiny_llama)
    scheduler = BatchScheduler(model, VanillaDrafter(), decode=lambda ids: "", max_batch=1, queue_size=4)
    scheduler.start()
    slow, running, queued = Collector(), Collector(), Collector()
    # no EOS ids in these settings: each request would run its 400 tokens
    scheduler.submit(Job(prompts(1, seed=5)[0], DecodeSettings(max_new_tokens=400), slow, timeout_s=0.01))
    assert slow.done.wait(30) and isinstance(slow.end, Failed) and slow.end.kind == "timeout"
    scheduler.submit(Job(prompts(1, seed=6)[0], DecodeSettings(max_new_tokens=400), running, timeout_s=60))
    scheduler.submit(Job(prompts(1, seed=7)[0], DecodeSettings(max_new_tokens=400), queued, timeout_s=0.05))
    assert queued.done.wait(30) and isinstance(queued.end, Failed) and queued.end.kind == "timeout"
    assert queued.tokens == [] and not running.done.is_set()  # timed out in the queue, without running
    scheduler.stop()
    assert running.done.wait(5) and isinstance(running.end, Failed) and running.end.kind == "shutdown"
    assert not scheduler.alive
    with pytest.raises(QueueFullError, match="shutting down"):
        scheduler.submit(Job([1], DecodeSettings(), Collector(), timeout_s=1))


def test_a_failing_drafter_fails_only_its_request(tiny_llama):
    model = Transformer.load(tiny_llama)

    class Flaky(LookupDrafter):
        def fork(self):
            return Flaky()

        def propose(self, sequence, budget):
            if sequence[0] == 99:
                raise RuntimeError("drafter broke")
            return super().propose(sequence, budget)

    requests = [([99, 5, 6, 7], DecodeSettings(max_new_tokens=20)), (prompts(1, seed=8)[0], DecodeSettings(max_new_tokens=20))]
    sinks, _ = run_batched(model, Flaky(), requests, max_batch=2)
    assert isinstance(sinks[0].end, Failed) and "drafter broke" in sinks[0].end.message
    assert isinstance(sinks[1].end, Finished) and len(sinks[1].tokens) == 20


def test_batch_budgets_shrink_trees_under_load_but_not_seeded_requests(tiny_llama):
    model = Transformer.load(tiny_llama, exact_dtype())
    drafter = LookupDrafter()
    seeded = SamplingParams(temperature=0.8, seed=5)
    requests = [(p, DecodeSettings(max_new_tokens=60, node_budget=6)) for p in prompts(3, seed=31)]
    requests.append(([5, 6, 7, 8, 9] * 4, DecodeSettings(max_new_tokens=60, node_budget=6, sampling=seeded)))  # lookup finds matches
    scheduler = BatchScheduler(model, drafter, lambda ids: "", max_batch=4, batch_budgets={1: 6, 2: 0, 3: 0, 4: 0})
    scheduler.start()
    sinks = [Collector() for _ in requests]
    for (prompt, settings), sink in zip(requests, sinks):
        scheduler.submit(Job(prompt, settings, sink, timeout_s=60))
    for sink in sinks:
        assert sink.done.wait(60)
    scheduler.stop()
    for (prompt, settings), sink in zip(requests, sinks):
        stats = sink.end.stats
        want, _ = run_decode(model, LookupDrafter(), prompt, max_new_tokens=60, node_budget=6, sampling=settings.sampling)
        if model.batch_invariant or settings.sampling.greedy:
            assert sink.tokens == want  # lossless greedy, and the seeded request drafted as it does alone
        shared = [size for size, batch in zip(stats.tree_sizes, sink.end.batch_sizes) if batch > 1]
        if settings.sampling.greedy:
            assert shared and max(shared) == 0  # batched iterations verified no draft nodes
        else:
            assert max(stats.tree_sizes) > 0


def test_a_failing_sink_costs_its_request_not_the_engine(tiny_llama):
    model = Transformer.load(tiny_llama)

    def broken(event):
        raise RuntimeError("the client's event loop is gone")

    good = Collector()
    requests = [(prompts(1, seed=9)[0], DecodeSettings(max_new_tokens=30)), (prompts(1, seed=10)[0], DecodeSettings(max_new_tokens=30))]
    scheduler = BatchScheduler(model, LookupDrafter(), lambda ids: "", max_batch=2)
    scheduler.start()
    try:
        scheduler.submit(Job(requests[0][0], requests[0][1], broken, timeout_s=60))
        scheduler.submit(Job(requests[1][0], requests[1][1], good, timeout_s=60))
        assert good.done.wait(30) and isinstance(good.end, Finished) and len(good.tokens) == 30
        assert scheduler.alive and scheduler.active == 0
    finally:
        scheduler.stop()
