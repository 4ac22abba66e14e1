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
