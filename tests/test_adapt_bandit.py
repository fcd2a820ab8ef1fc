"""The cost-aware bandit's decisions, checked by hand: gain against cost, UCB, shift reset."""

import math

import pytest
import torch

from specblock.adapt.bandit import SKIP, CostAwareBandit, ReachToTau, WindowStats, seconds_saved
from specblock.adapt.updates import reach_change_bound

ARMS = ["rank_head", "head_last_layer", "whole"]


def window(tau: float, iteration_s: float = 0.1, iterations: int = 100) -> WindowStats:
    return WindowStats(tokens=round(tau * iterations), target_forwards=iterations, seconds=iteration_s * iterations)


def test_seconds_saved_by_hand():
    # 1000 tokens at tau 2 take 500 iterations, at tau 2.5 take 400: 100 x 0.05 s saved
    assert seconds_saved(2.0, 0.5, 0.05, 1000) == pytest.approx(5.0)
    assert seconds_saved(2.0, -0.5, 0.05, 1000) < 0  # a worse drafter costs time
    assert seconds_saved(2.0, 0.0, 0.05, 1000) == 0.0


def test_in_domain_tau_leaves_no_headroom_so_the_bandit_skips():
    b = CostAwareBandit(ARMS, reference_tau=2.0, horizon_tokens=1000, noise_margin=0.15)
    w = window(1.8)  # 10% under the reference: inside the noise margin
    assert b.headroom_seconds(w) == 0.0
    assert b.choose(w) == SKIP


def test_headroom_tries_the_cheapest_untried_arm_first():
    b = CostAwareBandit(ARMS, reference_tau=3.0, horizon_tokens=1000, noise_margin=0.0)
    w = window(2.0)
    # back to tau 3: 1000/2 - 1000/3 = 166.7 iterations x 0.1 s
    assert b.headroom_seconds(w) == pytest.approx(16.6667, rel=1e-4)
    assert b.choose(w) == "rank_head"
    b.record("rank_head", gain_s=0.1, cost_s=0.5)  # did not pay for itself
    assert b.choose(w) == "head_last_layer"  # the next untried arm still has the headroom's value


def test_an_arm_that_pays_keeps_being_chosen_and_one_that_loses_is_dropped():
    b = CostAwareBandit(ARMS, reference_tau=2.6, horizon_tokens=1000, noise_margin=0.0, exploration=0.1)
    w = window(2.0)
    b.record("rank_head", gain_s=0.0, cost_s=1.0)
    b.record("head_last_layer", gain_s=6.0, cost_s=1.0)
    b.record("whole", gain_s=2.0, cost_s=3.0)
    assert b.choose(w) == "head_last_layer"


def test_when_every_arm_costs_more_than_it_gains_the_bandit_skips():
    b = CostAwareBandit(ARMS, reference_tau=2.6, horizon_tokens=1000, noise_margin=0.0, exploration=0.1)
    for arm in ARMS:
        for _ in range(5):
            b.record(arm, gain_s=0.2, cost_s=1.0)
    assert b.choose(window(2.0)) == SKIP


def test_ucb_revisits_a_rarely_tried_arm_with_a_close_mean():
    b = CostAwareBandit(["a", "b"], reference_tau=3.0, horizon_tokens=1000, noise_margin=0.0, exploration=1.0)
    for _ in range(20):
        b.record("a", gain_s=2.0, cost_s=1.0)  # net +1, well known
    b.record("b", gain_s=1.5, cost_s=1.0)  # net +0.5, tried once: large optimism bonus
    assert b.choose(window(2.0)) == "b"


def test_a_drop_in_tau_resets_the_statistics():
    b = CostAwareBandit(ARMS, reference_tau=2.0, shift_drop=0.25)
    assert not b.observe_window(window(2.0))
    assert not b.observe_window(window(1.9))
    b.record("whole", gain_s=0.0, cost_s=5.0)
    assert not b.observe_window(window(1.6))  # 17% under the mean of 1.95: not a shift
    assert b.stats["whole"].pulls == 1
    assert b.observe_window(window(1.2))  # 34% under the mean of 1.83
    assert b.resets == 1 and b.stats["whole"].pulls == 0 and len(b.history) == 1


def test_without_a_reference_the_default_headroom_applies():
    b = CostAwareBandit(ARMS, reference_tau=None, horizon_tokens=1000, default_headroom=0.25)
    assert b.headroom_seconds(window(2.0)) == pytest.approx(seconds_saved(2.0, 0.5, 0.1, 1000))


def test_arms_that_measured_no_gain_are_not_pulled_again():
    # every arm tried once; each update was rolled back (gain 0): paying its cost again buys nothing
    b = CostAwareBandit(ARMS, reference_tau=3.0, horizon_tokens=1000, noise_margin=0.0, exploration=1.0)
    w = window(2.0)
    for arm in ARMS:
        assert b.choose(w) == arm
        b.record(arm, gain_s=0.0, cost_s=1.0)
    assert b.choose(w) == SKIP
    # an arm whose one update measured a gain near its cost keeps an optimistic second try
    b = CostAwareBandit(ARMS, reference_tau=3.0, horizon_tokens=1000, noise_margin=0.0, exploration=1.0)
    b.record("rank_head", gain_s=0.0, cost_s=1.0)
    b.record("head_last_layer", gain_s=0.0, cost_s=1.0)
    b.record("whole", gain_s=1.6, cost_s=2.0)
    # 1.6 + 1.6 * sqrt(ln(3 + 1) / 1) - 2 = 1.48
    assert b.values(w)["whole"] == pytest.approx(1.6 + 1.6 * math.sqrt(math.log(4)) - 2.0)
    assert b.choose(w) == "whole"


def test_a_measured_loss_earns_no_optimism():
    b = CostAwareBandit(["a", "b", "c"], reference_tau=3.0, horizon_tokens=1000, noise_margin=0.0, exploration=1.0)
    for _ in range(5):
        b.record("a", gain_s=0.0, cost_s=0.5)
        b.record("b", gain_s=0.0, cost_s=0.5)
    b.record("c", gain_s=-3.0, cost_s=0.5)  # the update made the drafter worse
    assert b.values(window(2.0))["c"] == pytest.approx(-3.5)
    assert b.choose(window(2.0)) == SKIP


def test_the_reach_gain_bound_counts_blocks_of_neighbouring_positions():
    before = torch.zeros(32)
    # the same gain everywhere: no doubt about it, the bound is the mean
    assert reach_change_bound(before, before + 0.5, confidence=1.0) == pytest.approx((0.5, 0.5))
    # the whole gain in the first 8 positions: block means 1, 0, 0, 0 (std 0.5, 4 blocks)
    lucky = torch.cat([torch.ones(8), torch.zeros(24)])
    assert reach_change_bound(before, lucky, confidence=1.0) == pytest.approx((0.25, 0.25 - 0.5 / 2))
    assert reach_change_bound(before, lucky, confidence=2.0)[1] == pytest.approx(0.25 - 2 * 0.5 / 2)
    # fewer than two blocks: no spread to measure, the bound is the mean
    assert reach_change_bound(torch.zeros(5), torch.ones(5), confidence=1.0) == pytest.approx((1.0, 1.0))


def test_reach_is_scaled_to_live_tau_by_the_ratio_measured_on_the_stream():
    scale = ReachToTau()
    assert scale.factor == 1.0  # nothing measured yet: reach taken at face value
    scale.add(tau=1.1, mean_reach=0.4)
    assert scale.factor == pytest.approx(0.25)
    scale.add(tau=1.3, mean_reach=0.4)  # ratio of sums, not mean of ratios
    assert scale.factor == pytest.approx(0.4 / 0.8)
    scale.add(tau=0.9, mean_reach=0.2)  # tau below 1 cannot happen live; counts as nothing accepted
    assert scale.factor == pytest.approx(0.4 / 1.0)
    generous = ReachToTau()
    generous.add(tau=2.0, mean_reach=0.5)
    assert generous.factor == 1.0  # capped: reach never understates what a tree accepts

