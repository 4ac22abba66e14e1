"""The two interfaces every battle world offers.

`MultiAgentEnv` is SMAC's `StarCraft2Env` API, method for method, so code written against it runs on
real StarCraft II unchanged. `BatchEnv` holds B independent battles as numpy arrays with per-battle
termination and automatic reset; actors and data collection use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class MultiAgentEnv(Protocol):
    """SMAC's StarCraft2Env API (one battle)."""

    n_agents: int
    n_enemies: int
    episode_limit: int

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]: ...

    def step(self, actions: Any) -> tuple[float, bool, dict]: ...

    def get_obs(self) -> list[np.ndarray]: ...

    def get_obs_agent(self, agent_id: int) -> np.ndarray: ...

    def get_obs_size(self) -> int: ...

    def get_state(self) -> np.ndarray: ...

    def get_state_size(self) -> int: ...

    def get_avail_actions(self) -> list[list[int]]: ...

    def get_avail_agent_actions(self, agent_id: int) -> list[int]: ...

    def get_total_actions(self) -> int: ...

    def get_env_info(self) -> dict: ...

    def get_stats(self) -> dict: ...

    def seed(self) -> int | None: ...

    def close(self) -> None: ...


@dataclass
class BatchObservation:
    """What the agents see before acting, for every battle: obs [B, n, O] float32, state [B, S]
    float32, avail [B, n, A] bool."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray


@dataclass
class BatchStep:
    """Result of one step of all B battles.

    `next` is what to act on next; for battles that ended this step it is already the first
    observation of their new episode (automatic reset). The last observation of each ended
    episode (needed to bootstrap time-limit ends) is in `final`, one row per entry of `done_index`.
    """

    reward: np.ndarray  # [B] float32
    terminated: np.ndarray  # [B] bool: the episode ended this step (any reason)
    battle_won: np.ndarray  # [B] bool
    episode_limit: np.ndarray  # [B] bool: ended by the time limit (not a true terminal for bootstrapping)
    dead_allies: np.ndarray  # [B] int
    dead_enemies: np.ndarray  # [B] int
    next: BatchObservation
    done_index: np.ndarray  # [k] int: battles that ended this step
    final: BatchObservation  # [k, ...]: their last observation before the reset


@runtime_checkable
class BatchEnv(Protocol):
    """B independent battles stepped together."""

    num_envs: int
    n_agents: int
    n_enemies: int
    n_actions: int
    episode_limit: int

    def get_env_info(self) -> dict: ...

    def reset(self) -> BatchObservation: ...

    def step(self, actions: np.ndarray) -> BatchStep: ...

    def get_stats(self) -> dict: ...

    def close(self) -> None: ...


class OneBattleView:
    """SMAC's per-battle getters for a one-battle world built on a `BatchEnv` of one battle, which
    the subclass keeps in `self._engine` (it must offer `observation()`, the latest
    `BatchObservation`). The subclass writes `reset` and `step`, which differ by world."""

    _engine: Any

    def _current(self) -> BatchObservation:
        obs = self._engine.observation()
        if obs is None:
            raise RuntimeError("call reset() first")
        return obs

    def get_obs(self) -> list[np.ndarray]:
        return list(self._current().obs[0])

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        return self._current().obs[0, agent_id]

    def get_obs_size(self) -> int:
        return int(self._engine.get_env_info()["obs_shape"])

    def get_state(self) -> np.ndarray:
        return self._current().state[0]

    def get_state_size(self) -> int:
        return int(self._engine.get_env_info()["state_shape"])

    def get_avail_actions(self) -> list[list[int]]:
        return self._current().avail[0].astype(int).tolist()

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        return self._current().avail[0, agent_id].astype(int).tolist()

    def get_total_actions(self) -> int:
        return int(self._engine.n_actions)

    def get_env_info(self) -> dict:
        return self._engine.get_env_info()

    def get_stats(self) -> dict:
        return self._engine.get_stats()

    def seed(self) -> int:
        return self._engine.seed()

    def close(self) -> None:
        self._engine.close()
