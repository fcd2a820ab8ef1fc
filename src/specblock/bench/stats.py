"""Small statistics without scipy: mean ± std, Wilcoxon signed-rank test, bootstrap interval."""

from __future__ import annotations

import math
import random

EXACT_MAX_N = 50  # exact null distribution up to this many non-zero differences (as scipy's "auto")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than 2 values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of `values`, ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _exact_cdf(n: int, w: float) -> float:
    """P(W+ <= w) under H0 for n untied differences: subset sums of 1..n, each sign equally likely."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for k in range(1, n + 1):
        for s in range(len(counts) - 1, k - 1, -1):
            counts[s] += counts[s - k]
    return sum(counts[: math.floor(w) + 1]) / 2**n


def wilcoxon_signed_rank(differences: list[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of H0: the differences are symmetric around 0.

    Zero differences are dropped (Wilcoxon's convention). With at most 50 non-zero
    differences and no tied magnitudes the p-value is exact; otherwise it uses the normal
    approximation with the tie-corrected variance and no continuity correction (the same
    choices as `scipy.stats.wilcoxon` with its defaults).
    """
    d = [x for x in differences if x != 0]
    n = len(d)
    if n == 0:
        return {
            "n": 0,
            "w_plus": 0.0,
            "w_minus": 0.0,
            "statistic": 0.0,
            "p_value": 1.0,
            "method": "no non-zero differences",
        }
    ranks = average_ranks([abs(x) for x in d])
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    w_minus = sum(r for r, x in zip(ranks, d) if x < 0)
    stat = min(w_plus, w_minus)
    tied = len({abs(x) for x in d}) < n
    if n <= EXACT_MAX_N and not tied:
        p, how = min(1.0, 2 * _exact_cdf(n, stat)), "exact"
    else:
        ties: dict[float, int] = {}
        for r in ranks:
            ties[r] = ties.get(r, 0) + 1
        var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties.values()) / 48
        z = (stat - n * (n + 1) / 4) / math.sqrt(var) if var > 0 else 0.0
        p, how = math.erfc(abs(z) / math.sqrt(2)), "normal approximation (tie-corrected)"
    return {"n": n, "w_plus": w_plus, "w_minus": w_minus, "statistic": stat, "p_value": p, "method": how}


def bootstrap_mean_ci(
    values: list[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling the values with replacement, fixed seed)."""
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    lo = means[math.floor((1 - level) / 2 * (resamples - 1))]
    hi = means[math.ceil((1 + level) / 2 * (resamples - 1))]
    return lo, hi
