"""Confidence intervals for evaluation results: pure functions on counts and values.

A win rate from n test episodes is a binomial proportion. The Wilson score interval is used rather
than the normal one because it stays inside [0, 1] and is not empty at 0 or n wins, which are
common win rates early and late in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.96  # two-sided 95% quantile of the standard normal


def wilson_interval(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `wins` successes in `n` trials; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = wins / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp only rounding error: the interval lies in [0, 1] by construction.
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_half_width(values: Sequence[float], z: float = Z95) -> float:
    """Half-width z * sd / sqrt(n) of the normal-approximation interval for the mean of `values`
    (sample sd, n - 1 in the denominator); 0 for fewer than two values, which have no spread."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return z * math.sqrt(var / n)


# Two-sided 95% quantiles of Student's t by degrees of freedom: few seeds need t, not 1.96.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student's t interval of the mean of `values` (one per seed, say);
    low and high are NaN for fewer than two values. Past 10 degrees of freedom z = 1.96 stands in,
    slightly narrow (2.09 is t's at 20)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, Z95) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
