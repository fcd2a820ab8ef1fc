"""Every drafter's greedy output equals plain greedy decoding, token for token (fp32)."""

import random

import pytest
import torch
from scipy.stats import chisquare

from specblock.drafters.draft_model import DraftModelDrafter
from specblock.drafters.lookup import LookupDrafter
from specblock.drafters.vanilla import VanillaDrafter
from specblock.errors import ContextLengthError, InvalidSettingError
from specblock.sampling import SamplingParams, target_probs
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree
from specblock.verify import Acceptance

from helpers import FixedTreeDrafter, run_decode
from conftest import build_tiny_model


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = [rng.randrange(3, 128) for _ in range(rng.randrange(2, 12))]
        out.append(base * (1 + i % 3))  # some prompts repeat themselves: lookup finds matches
    return out


@pytest.fixture(scope="module")
def models(tiny_llama, tiny_qwen2, tiny_draft_llama):
    return {
        "llama": Transformer.load(tiny_llama),
        "qwen2": Transformer.load(tiny_qwen2),
        "draft": Transformer.load(tiny_draft_llama),
    }


def drafters_for(models, arch):
    target = models[arch]
    return {
        "lookup": LookupDrafter(),  # the default: drafts only after a 3-4 token match
        "lookup-1gram": LookupDrafter(max_ngram=3, min_ngram=1),
        "lookup-narrow": LookupDrafter(max_ngram=2, min_ngram=1, max_depth=3, max_matches=1),
        "draft-model(self)": DraftModelDrafter(target, depth=4, branch=3),
        "draft-model(other)": DraftModelDrafter(models["draft"], depth=3, branch=2) if arch == "llama" else None,
    }


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("max_new", [1, 2, 17, 60])
def test_greedy_equals_vanilla_for_every_drafter(models, arch, max_new):
    target = models[arch]
    speculated = {}
    for prompt in prompts(8, seed=max_new):
        expected, base = run_decode(target, VanillaDrafter(), prompt, max_new_tokens=max_new, node_budget=0)
        assert base.target_forwards == len(expected)  # plain decoding: tau = 1 exactly
        for name, drafter in drafters_for(models, arch).items():
            if drafter is None:
                continue
            got, stats = run_decode(target, drafter, prompt, max_new_tokens=max_new, node_budget=12)
            assert got == expected, f"{name} diverged on prompt {prompt}"
            assert stats.new_tokens == len(got)
            assert stats.target_forwards == len(stats.accepted_lengths) + 1
            assert sum(stats.accepted_lengths) + stats.target_forwards == len(got)
            speculated[name] = speculated.get(name, 0) + sum(stats.accepted_lengths)
    if max_new > 2:  # the comparison is not vacuous: drafts were accepted (the default lookup rarely
        # finds 3-token matches in random models' text, so it is only checked for equality)
        assert all(count > 0 for name, count in speculated.items() if name != "lookup"), speculated


def test_eos_inside_an_accepted_path_stops_exactly_there(models):
    target = models["llama"]
    prompt = prompts(1, seed=3)[0]
    free, _ = run_decode(target, VanillaDrafter(), prompt, max_new_tokens=40, node_budget=0)
    cut = next(i for i in range(5, 40) if free[i] not in free[:i])  # first occurrence of a token, not early
    eos = free[cut]
    expected, _ = run_decode(target, VanillaDrafter(), prompt, max_new_tokens=40, node_budget=0, eos_token_ids=(eos,))
    assert expected == free[: cut + 1]
    drafter = DraftModelDrafter(target, depth=6, branch=1)  # self-drafting: whole chains get accepted
    got, stats = run_decode(target, drafter, prompt, max_new_tokens=40, node_budget=8, eos_token_ids=(eos,))
    assert got == expected
    assert stats.stop_reason == "eos"
    assert stats.target_forwards < len(got)  # several tokens per forward, and none counted past EOS
    assert stats.new_tokens == cut + 1


def test_max_new_tokens_cuts_inside_a_path_and_tau_counts_kept_tokens(models):
    target = models["llama"]
    prompt = prompts(1, seed=4)[0]
    got, stats = run_decode(target, DraftModelDrafter(target, depth=5, branch=1), prompt, max_new_tokens=8, node_budget=5)
    expected, _ = run_decode(target, VanillaDrafter(), prompt, max_new_tokens=8, node_budget=0)
    assert got == expected and len(got) == 8
    assert stats.stop_reason == "length"
    assert stats.target_forwards == 3  # prefill (1 token) + 5 accepted + bonus (6) + 1 more
    assert stats.new_tokens / stats.target_forwards == pytest.approx(8 / 3)


def test_context_limit_stops_generation(tmp_path):
    model = Transformer.load(build_tiny_model(tmp_path / "short", max_positions=40, tokenizer=False))
    prompt = [5, 6, 7, 8] * 8
    expected, base = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=30, node_budget=0)
    wide = DraftTree()
    for tok in range(3, 19):  # 16 nodes side by side: wider than the room left in the context
        wide.add(tok, -1)
    for drafter in (FixedTreeDrafter(wide), DraftModelDrafter(model, depth=6, branch=3), LookupDrafter(min_ngram=1)):
        got, stats = run_decode(model, drafter, prompt, max_new_tokens=30, node_budget=16)
        assert got == expected
        assert len(prompt) + len(got) == 40
        assert stats.stop_reason == "context"
        assert drafter.name == "lookup" or max(stats.tree_sizes) > 3
    assert base.stop_reason == "context"
    with pytest.raises(ContextLengthError):
        run_decode(model, VanillaDrafter(), list(range(3, 43)), max_new_tokens=5)


def test_bad_decode_settings_are_rejected(models):
    with pytest.raises(InvalidSettingError):
        run_decode(models["llama"], VanillaDrafter(), [5, 6], max_new_tokens=0)
    with pytest.raises(InvalidSettingError):
        run_decode(models["llama"], VanillaDrafter(), [5, 6], node_budget=-1)


def test_feedback_reports_the_accepted_path_with_features(models):
    target = models["llama"]
    chain = DraftTree()
    parent = -1
    prompt = [10, 11, 12, 13]
    truth, _ = run_decode(target, VanillaDrafter(), prompt, max_new_tokens=6, node_budget=0)
    for tok in truth[1:3]:  # the true continuation after the first token ...
        parent = chain.add(tok, parent)
    wrong = next(t for t in range(3, 128) if t != truth[3])
    chain.add(wrong, parent)  # ... then a wrong third token: rejected, corrected by truth[3]
    chain.add(next(t for t in range(3, 128) if t != truth[1]), -1)  # a wrong sibling at depth 1
    drafter = FixedTreeDrafter(chain)
    drafter.needs_features = True
    run_decode(target, drafter, prompt, max_new_tokens=8, node_budget=4)
    fb = drafter.feedback[0]
    assert fb.tokens == [truth[0], truth[1], truth[2]] and fb.next_token == truth[3]
    assert fb.start_position == len(prompt)
    assert fb.accepted_nodes == [0, 1] and fb.rejected_node == 2
    assert fb.logits.argmax(-1).tolist() == truth[1:4]
    seq = torch.tensor(prompt + truth[:3])
    ref = target.forward(seq, torch.arange(len(seq)), target.new_cache(16), 0, capture=True)
    torch.testing.assert_close(fb.features, ref.features[len(prompt) :], atol=1e-4, rtol=1e-4)


# ---- sampling, end to end ----------------------------------------------------------------

def exact_joint_distribution(model, prompt, params, length):
    """P(t1, ..., t_length) by enumerating the target (small vocabulary)."""
    from specblock.target.runner import TargetRunner

    runner = TargetRunner(model)
    vocab = model.cfg.vocab_size

    def next_probs(seq):
        return target_probs(runner.prefill(seq, capacity=len(seq) + 1, capture=False).logits[0], params)

    def joint(prefix: list[int], remaining: int) -> torch.Tensor:
        probs = next_probs(prompt + prefix)
        if remaining == 1:
            return probs
        return torch.stack([probs[a] * joint(prefix + [a], remaining - 1) for a in range(vocab)])

    return joint([], length)


LENGTH = 4  # t1 from the prefill; t2..t4 from verifications of a tree up to depth 3


def sample_counts(model, drafter, prompt, params, n):
    """Counts of sampled sequences, and how many iterations accepted 2+ draft tokens."""
    counts = torch.zeros((model.cfg.vocab_size,) * LENGTH)
    deep = 0
    for i in range(n):
        p = SamplingParams(params.temperature, params.top_k, params.top_p, seed=i)
        got, stats = run_decode(model, drafter, prompt, max_new_tokens=LENGTH, node_budget=len(drafter.tree), sampling=p)
        counts[tuple(got)] += 1
        deep += sum(a >= 2 for a in stats.accepted_lengths)
    return counts, deep


def chi_square_pvalue(counts, probs, n):
    expected = probs.flatten() * n
    observed = counts.flatten()
    assert observed[expected == 0].sum() == 0
    common = expected >= 5  # pool rare cells so the chi-square approximation holds
    obs = torch.cat([observed[common], observed[~common].sum()[None]])
    exp = torch.cat([expected[common], expected[~common].sum()[None]])
    return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("vocab6"), vocab=6, layers=2, std=0.4, tokenizer=False)
    return Transformer.load(path)


def branching_tree() -> DraftTree:
    tree = DraftTree()
    for tok, par in [(0, -1), (1, -1), (2, -1), (0, 0), (1, 0), (3, 1), (2, 3), (4, 3), (1, 6)]:
        tree.add(tok, par)
    return tree


N_SAMPLES = 3000


def test_speculative_sampling_matches_target_distribution(small_vocab_model):
    """Chi-square goodness of fit of (t1..t4) samples against the exact joint, significance 1e-3."""
    params = SamplingParams(temperature=1.0, top_p=0.95)
    prompt = [1, 4, 2, 5]
    exact = exact_joint_distribution(small_vocab_model, prompt, params, LENGTH)
    counts, deep = sample_counts(small_vocab_model, FixedTreeDrafter(branching_tree()), prompt, params, N_SAMPLES)
    assert deep > N_SAMPLES // 20  # multi-level acceptance (accepted nodes' own children) is exercised
    assert chi_square_pvalue(counts, exact, N_SAMPLES) > 1e-3


def test_sampling_check_fails_when_acceptance_is_broken(small_vocab_model, monkeypatch):
    """Accepting each candidate with p(c) but then sampling from p (no residual) must be detected."""

    def broken(tree, logits, params, generator):
        node, path = 0, [0]
        children = [[i + 1 for i, p in enumerate(tree.parents) if p + 1 == v] for v in range(len(tree) + 1)]
        while True:
            probs = target_probs(logits[node], params)
            nxt = next(
                (c for c in children[node] if float(torch.rand((), generator=generator)) < float(probs[tree.tokens[c - 1]])),
                None,
            )
            if nxt is None:
                return Acceptance(path, int(torch.multinomial(probs, 1, generator=generator)))
            node = nxt
            path.append(node)

    monkeypatch.setattr("specblock.decoding.accept_sampling", broken)
    params = SamplingParams(temperature=1.0, top_p=0.95)
    prompt = [1, 4, 2, 5]
    exact = exact_joint_distribution(small_vocab_model, prompt, params, LENGTH)
    counts, _ = sample_counts(small_vocab_model, FixedTreeDrafter(branching_tree()), prompt, params, N_SAMPLES)
    assert chi_square_pvalue(counts, exact, N_SAMPLES) < 1e-6


def test_same_seed_same_sample(models):
    target = models["qwen2"]
    p = SamplingParams(temperature=0.8, seed=11)
    a, _ = run_decode(target, LookupDrafter(), [5, 6, 7, 5, 6, 7], max_new_tokens=20, node_budget=8, sampling=p)
    b, _ = run_decode(target, LookupDrafter(), [5, 6, 7, 5, 6, 7], max_new_tokens=20, node_budget=8, sampling=p)
    assert a == b
