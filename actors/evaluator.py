"""Greedy evaluation: play test episodes with no exploration and report win rate and return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.rollout import RolloutWorker
from common.episode import Episode


@dataclass(frozen=True)
class EvalResult:
    episodes: int
    win_rate: float
    mean_return: float
    policy_version: int


def summarize(episodes: list[Episode]) -> tuple[float, float]:
    """(win rate, mean return) of finished episodes."""
    if not episodes:
        return 0.0, 0.0
    wins = np.mean([ep.meta.battle_won for ep in episodes])
    returns = np.mean([ep.meta.episode_return for ep in episodes])
    return float(wins), float(returns)


def evaluate(worker: RolloutWorker, episodes: int) -> EvalResult:
    """Play `episodes` greedy test episodes from a fresh reset with the worker's newest weights."""
    mode, worker.exploration = worker.exploration, "greedy"
    try:
        finished = worker.run_episodes(episodes, epsilon=0.0)
    finally:
        worker.exploration = mode
    win_rate, mean_return = summarize(finished)
    return EvalResult(len(finished), win_rate, mean_return, worker.newest_version)
