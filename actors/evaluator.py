"""Greedy evaluation: play test episodes with no exploration and report win rate and return, each
with its 95% confidence interval (Wilson for the win rate, normal approximation for the return)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.rollout import RolloutWorker
from common.episode import Episode
from common.stats import mean_half_width, wilson_interval

PROBE_EPISODES = 32  # the starting policy's greedy episodes on which policy agreement is measured


@dataclass(frozen=True)
class EvalResult:
    episodes: int
    win_rate: float
    mean_return: float
    policy_version: int
    win_rate_low: float = 0.0  # 95% Wilson score interval of the win rate
    win_rate_high: float = 1.0
    return_ci: float = 0.0  # half-width of the return's 95% interval: mean_return +- return_ci

    def log_fields(self) -> dict:
        """The columns every evaluation record carries, intervals next to the values they qualify."""
        return {
            "win_rate": self.win_rate,
            "win_rate_low": self.win_rate_low,
            "win_rate_high": self.win_rate_high,
            "return": self.mean_return,
            "return_ci": self.return_ci,
        }


def summarize(episodes: list[Episode]) -> tuple[float, float]:
    """(win rate, mean return) of finished episodes."""
    if not episodes:
        return 0.0, 0.0
    wins = np.mean([ep.meta.battle_won for ep in episodes])
    returns = np.mean([ep.meta.episode_return for ep in episodes])
    return float(wins), float(returns)


def eval_result(episodes: list[Episode], policy_version: int) -> EvalResult:
    """The evaluation result of played test episodes, intervals included."""
    wins = sum(bool(ep.meta.battle_won) for ep in episodes)
    returns = [ep.meta.episode_return for ep in episodes]
    win_rate, mean_return = summarize(episodes)
    low, high = wilson_interval(wins, len(episodes))
    return EvalResult(
        len(episodes), win_rate, mean_return, policy_version, low, high, mean_half_width(returns)
    )


def play_greedy(worker: RolloutWorker, episodes: int) -> list[Episode]:
    """Play `episodes` greedy test episodes from a fresh reset with the worker's newest weights.

    Greedy whatever the worker's exploration mode (restored afterwards); episodes are counted in
    rounds of one per battle (see `RolloutWorker.run_episodes`), so long ones are not under-counted.
    """
    mode, worker.exploration = worker.exploration, "greedy"
    try:
        return worker.run_episodes(episodes, epsilon=0.0)
    finally:
        worker.exploration = mode


def evaluate(worker: RolloutWorker, episodes: int) -> EvalResult:
    """The result of `episodes` greedy test episodes (see `play_greedy`)."""
    return eval_result(play_greedy(worker, episodes), worker.newest_version)
