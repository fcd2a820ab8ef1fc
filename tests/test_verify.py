"""Acceptance rules. The sampling rule must reproduce the target distribution exactly.

Statistical tolerance: a chi-square goodness-of-fit test of the sampled tokens against the
target distribution must not reject at significance 1e-3 (seeded, so deterministic); the
same test must reject a deliberately broken rule with p < 1e-6.
"""

import pytest
import torch
from scipy.stats import chisquare

from specblock.errors import InvalidSettingError
from specblock.sampling import SamplingParams, target_probs
from specblock.tree import DraftTree
from specblock.verify import Acceptance, accept_greedy, accept_sampling


def tree_of(tokens_parents):
    t = DraftTree()
    for tok, par in tokens_parents:
        t.add(tok, par)
    return t


def test_greedy_takes_longest_matching_path_and_bonus():
    tree = tree_of([(3, -1), (4, -1), (5, 1), (6, 2), (7, 0)])  # verify idx: 1:3 2:4 3:5 4:6 5:7
    argmax_per_node = [4, 9, 6, 8, 1, 2]
    logits = torch.full((6, 10), -5.0)
    logits[torch.arange(6), torch.tensor(argmax_per_node)] = 5.0
    # root's argmax 4 is verify node 2; node 2's argmax 6 matches none of its children (token 5)
    assert accept_greedy(tree, logits) == Acceptance(path=[0, 2], next_token=6)


def test_greedy_rejects_everything_when_no_child_matches():
    tree = tree_of([(3, -1), (4, 0)])
    logits = torch.zeros(3, 10)
    logits[0, 9] = 1.0
    assert accept_greedy(tree, logits) == Acceptance(path=[0], next_token=9)


def test_greedy_follows_a_deep_branch():
    tree = tree_of([(1, -1), (2, -1), (3, 1), (4, 2), (5, 3)])
    # verify indices: 1:tok1 and 2:tok2 under the root, then the chain 3:tok3 -> 4:tok4 -> 5:tok5 under 2
    logits = torch.zeros(6, 10)
    for node, best in [(0, 2), (2, 3), (3, 4), (4, 5), (5, 7)]:
        logits[node, best] = 1.0
    assert accept_greedy(tree, logits) == Acceptance(path=[0, 2, 3, 4, 5], next_token=7)


def first_token_samples(rule, logits, tree, params, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(logits.shape[-1])
    for _ in range(n):
        acc = rule(tree, logits, params, gen)
        tok = tree.tokens[acc.path[1] - 1] if len(acc.path) > 1 else acc.next_token
        counts[tok] += 1
    return counts


def broken_accept_sampling(tree, logits, params, generator):
    """The classic mistake: on rejection, sample from p itself instead of the residual."""
    probs = target_probs(logits[0], params)
    for child in range(1, len(tree) + 1):
        if tree.parents[child - 1] == -1 and float(torch.rand((), generator=generator)) < float(probs[tree.tokens[child - 1]]):
            return Acceptance(path=[0, child], next_token=0)
    return Acceptance(path=[0], next_token=int(torch.multinomial(probs, 1, generator=generator)))


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=5, top_p=0.9)])
def test_sampling_rule_reproduces_target_distribution(params):
    logits = torch.tensor([[2.0, 1.6, 1.2, 0.9, 0.5, 0.1, -0.5, -1.0]]).repeat(4, 1)
    tree = tree_of([(0, -1), (2, -1), (1, -1)])  # three candidates, likely ones first
    n = 30000
    counts = first_token_samples(accept_sampling, logits, tree, params, n)
    expected = target_probs(logits[0], params) * n
    keep = expected > 0
    assert counts[~keep].sum() == 0  # nothing outside top-k / top-p is ever produced
    assert chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue > 1e-3


def test_statistical_check_catches_a_broken_rule():
    params = SamplingParams(temperature=1.0)
    logits = torch.tensor([[2.0, 1.6, 1.2, 0.9, 0.5, 0.1, -0.5, -1.0]]).repeat(4, 1)
    tree = tree_of([(0, -1), (2, -1), (1, -1)])
    n = 30000
    counts = first_token_samples(broken_accept_sampling, logits, tree, params, n)
    expected = target_probs(logits[0], params) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue < 1e-6


def test_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.2, 0, 0, 0]) / 0.7)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -2}]
)
def test_invalid_sampling_settings_are_rejected(kwargs):
    with pytest.raises(InvalidSettingError):
        SamplingParams(**kwargs)
