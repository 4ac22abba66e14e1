"""Aggregate scores over runs with bootstrap confidence intervals: pure functions on arrays.

What cooperative-MARL evaluation asks for (Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice"; Gorsane et al. 2022): point estimates that few seeds do not throw about
(median, interquartile mean) and percentile intervals from a *stratified* bootstrap, which draws
runs with replacement within each task independently, so every resample keeps every task.

Scores are arrays shaped [runs, tasks] (one column per task; a single task is one column).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all values: the mean of what is left after dropping floor(n / 4) of the
    lowest and floor(n / 4) of the highest (the discrete 25% trimmed mean)."""
    values = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = len(values) // 4
    return float(values[cut : len(values) - cut].mean())


def median(scores: np.ndarray) -> float:
    return float(np.median(np.asarray(scores, dtype=float)))


def mean(scores: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores, dtype=float)))


def _columns(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [runs, tasks] with at least one run, got shape {scores.shape}")
    return scores


def stratified_resamples(runs: int, tasks: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices [reps, runs, tasks]: for each resample and each task, `runs` draws with
    replacement from that task's runs."""
    return rng.integers(0, runs, size=(reps, runs, tasks))


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(
    scores: np.ndarray,
    statistic: Statistic,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """`statistic` of `scores` [runs, tasks] and its percentile interval over `reps` stratified
    bootstrap resamples (seeded: the same input gives the same interval)."""
    scores = _columns(scores)
    runs, tasks = scores.shape
    idx = stratified_resamples(runs, tasks, reps, np.random.default_rng(seed))
    cols = np.arange(tasks)[None, None, :]
    resampled = scores[idx, cols]  # [reps, runs, tasks]
    values = np.array([statistic(r) for r in resampled])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(statistic(scores), float(low), float(high))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for one run of X and one of Y drawn at random, averaged over tasks
    (the Mann-Whitney U statistic over n * m, per task). x [runs_x, tasks], y [runs_y, tasks]."""
    x, y = _columns(x), _columns(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks, got {x.shape[1]} and {y.shape[1]}")
    per_task = []
    for t in range(x.shape[1]):
        a, b = x[:, t][:, None], y[:, t][None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def probability_of_improvement_ci(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """`probability_of_improvement(x, y)` with a percentile interval: x's and y's runs are each
    resampled with replacement within every task, independently of each other."""
    x, y = _columns(x), _columns(y)
    rng = np.random.default_rng(seed)
    tasks = x.shape[1]
    cols = np.arange(tasks)[None, :]
    values = np.empty(reps)
    for r in range(reps):
        xi = rng.integers(0, x.shape[0], size=(x.shape[0], tasks))
        yi = rng.integers(0, y.shape[0], size=(y.shape[0], tasks))
        values[r] = probability_of_improvement(x[xi, cols], y[yi, cols])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(probability_of_improvement(x, y), float(low), float(high))
