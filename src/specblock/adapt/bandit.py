"""The cost-aware bandit (design §8): after each window of generated tokens, update the
drafter (and which part) only when the optimistic gain beats the measured cost.

Rewards are in seconds over the amortisation horizon: the generation time an update is
expected to save minus its own wall time. The saving is the offline estimate of
`updates.py` measured on the window after the update, text the update never saw and that
played no part in choosing it (see `drafter.py`); the bandit hears of a kept update then,
and of one undone by its first check at once, with a gain of 0.
An arm never tried since the last reset is valued at the headroom: the seconds saved if
tau went back from its live value to the drafter's in-domain (calibrated) level, which is
all an update can hope for. A tried arm is valued by UCB on its net reward with the
optimism on the gain only: mean gain + bonus - mean cost. The cost is measured, not
guessed, so it gets no bonus; the bonus scales with the spread of the arm's measured gains
(with one pull, the gain itself). An arm whose updates measured no gain is therefore
never pulled again until a reset. When no arm's value exceeds 0 the bandit skips
(reward 0). A drop of the live tau by more than
`shift_drop` against the windows since the last reset counts as a domain shift and resets
the arms' statistics, since their gains were measured on the old text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SKIP = "skip"


@dataclass
class ArmStats:
    pulls: int = 0
    gain_sum: float = 0.0
    gain_sq_sum: float = 0.0
    cost_sum: float = 0.0

    @property
    def mean_gain(self) -> float:
        return self.gain_sum / self.pulls

    @property
    def gain_spread(self) -> float:
        """Sample standard deviation of the measured gains; after one pull, the gain itself
        when positive (a measured loss earns no optimism)."""
        if self.pulls < 2:
            return max(0.0, self.mean_gain)
        var = (self.gain_sq_sum - self.pulls * self.mean_gain**2) / (self.pulls - 1)
        return math.sqrt(max(0.0, var))

    @property
    def mean_cost(self) -> float:
        return self.cost_sum / self.pulls


@dataclass
class WindowStats:
    """What one window of generation measured."""

    tokens: int  # generated tokens in the window
    target_forwards: int  # verifications (iterations) in the window
    seconds: float  # wall time of those iterations (drafting + verification)

    @property
    def tau(self) -> float:
        return self.tokens / max(1, self.target_forwards)

    @property
    def iteration_s(self) -> float:
        return self.seconds / max(1, self.target_forwards)


def seconds_saved(tau: float, delta_tau: float, iteration_s: float, horizon_tokens: float) -> float:
    """Generation time saved over `horizon_tokens` if tau rises by `delta_tau` at the same cost per iteration."""
    if tau <= 0:
        return 0.0
    return iteration_s * horizon_tokens * (1.0 / tau - 1.0 / max(1e-6, tau + delta_tau))


@dataclass
class ReachToTau:
    """How much of the offline reach shows up as live tau on this stream.

    Reach is an optimistic proxy: it counts a slot whenever the target's token lies within
    the width the drafter would give it, while the live tree at a small node budget cannot
    hold every slot at that width, and positions outside the draft vocabulary never get a
    chance. Each window whose reach was measured with the weights that generated it gives a
    pair (live tokens accepted per iteration = tau - 1, mean reach); the factor is their
    ratio of sums, capped at 1 (reach never understates what a tree can accept), and 1 until
    the first pair. A gain in reach times this factor is the expected gain in live tau.
    """

    live_sum: float = 0.0
    reach_sum: float = 0.0
    pairs: int = 0

    def add(self, tau: float, mean_reach: float) -> None:
        self.live_sum += max(0.0, tau - 1.0)
        self.reach_sum += max(0.0, mean_reach)
        self.pairs += 1

    @property
    def factor(self) -> float:
        if self.reach_sum <= 0:
            return 1.0
        return min(1.0, self.live_sum / self.reach_sum)


@dataclass
class CostAwareBandit:
    arms: list[str]
    reference_tau: float | None = None  # the drafter's in-domain tau (calibration) at this budget
    horizon_tokens: float = 1024.0
    noise_margin: float = 0.15  # live tau within this fraction of the reference leaves no headroom
    shift_drop: float = 0.25
    exploration: float = 1.0
    default_headroom: float = 0.25  # relative headroom when no reference tau is known
    stats: dict[str, ArmStats] = field(default_factory=dict)
    history: list[WindowStats] = field(default_factory=list)  # windows since the last reset
    decisions: int = 0
    resets: int = 0

    def __post_init__(self) -> None:
        self.stats = {a: ArmStats() for a in self.arms}

    # -- shift -----------------------------------------------------------------------
    def observe_window(self, window: WindowStats) -> bool:
        """Record a window; True when it reveals a shift (and the statistics were reset)."""
        shifted = False
        if len(self.history) >= 2:
            mean_tau = sum(w.tau for w in self.history) / len(self.history)
            if window.tau < (1.0 - self.shift_drop) * mean_tau:
                self.reset()
                shifted = True
        self.history.append(window)
        return shifted

    def reset(self) -> None:
        self.stats = {a: ArmStats() for a in self.arms}
        self.history = []
        self.decisions = 0
        self.resets += 1

    # -- value -----------------------------------------------------------------------
    def headroom_seconds(self, window: WindowStats) -> float:
        """Seconds saved over the horizon if tau returned to the reference level."""
        tau = window.tau
        if self.reference_tau is None:
            gap = self.default_headroom * tau
        else:
            gap = self.reference_tau - tau - self.noise_margin * self.reference_tau
        return seconds_saved(tau, max(0.0, gap), window.iteration_s, self.horizon_tokens) if gap > 0 else 0.0

    def values(self, window: WindowStats) -> dict[str, float]:
        """Each arm's optimistic net reward (seconds) for the coming window."""
        headroom = self.headroom_seconds(window)
        total = max(1, sum(s.pulls for s in self.stats.values()))
        out = {}
        for arm, s in self.stats.items():
            if s.pulls == 0:
                out[arm] = headroom
            else:
                bonus = self.exploration * s.gain_spread * math.sqrt(math.log(total + 1) / s.pulls)
                out[arm] = s.mean_gain + bonus - s.mean_cost
        return out

    def choose(self, window: WindowStats) -> str:
        """The arm to pull now, or SKIP when no arm is expected to pay for itself."""
        self.decisions += 1
        values = self.values(window)
        best = max(self.arms, key=lambda a: (values[a], -self.arms.index(a)))  # ties: the cheaper arm listed first
        return best if values[best] > 0 else SKIP

    def record(self, arm: str, gain_s: float, cost_s: float) -> None:
        """The measured outcome of pulling `arm`: estimated seconds saved and the update's wall time."""
        s = self.stats[arm]
        s.pulls += 1
        s.gain_sum += gain_s
        s.gain_sq_sum += gain_s * gain_s
        s.cost_sum += cost_s
