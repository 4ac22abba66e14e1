"""A fake of SMAC's `smac.env` module: a tiny deterministic battle with StarCraft2Env's API.

What the fake does, so tests can predict every value:
- obs of agent i = [episode, step, i, seed, 1] (episode counts resets, step counts steps since the
  reset), state = [episode, step, seed, 7]; a dead agent's obs is all zeros, as in SMAC.
- agent i may no-op never, stop and move always, attack enemy e only when e <= i; a dead agent may
  only no-op.
- reward = sum of the actions taken (+10 for a win); the battle is won at step `win_at`, lost (all
  allies dead) at step `lose_at`, and otherwise ends at `episode_limit` as a timeout, counted like SMAC.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

OBS_SIZE = 5
STATE_SIZE = 4


class FakeStarCraft2Env:
    instances: list[FakeStarCraft2Env] = []

    def __init__(
        self,
        map_name: str = "3m",
        seed: int | None = None,
        n_agents: int = 3,
        n_enemies: int = 3,
        episode_limit: int = 5,
        win_at: int | None = None,
        lose_at: int | None = None,
        continuing_episode: bool = False,
        **flags: object,
    ) -> None:
        self.map_name = map_name
        self._seed = seed
        self.n_agents = n_agents
        self.n_enemies = n_enemies
        self.n_actions = 6 + n_enemies
        self.episode_limit = episode_limit
        self.win_at = win_at
        self.lose_at = lose_at
        self.continuing_episode = continuing_episode
        self.flags = flags
        self.calls: list[str] = []
        self.received_actions: list[list[int]] = []
        self.episode = 0
        self.steps = 0
        self.allies_alive = True
        self.closed = False
        self.stats = {"battles_won": 0, "battles_game": 0, "battles_draw": 0, "timeouts": 0, "restarts": 0}
        type(self).instances.append(self)

    # --- episode ---------------------------------------------------------------------------------
    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        self.calls.append("reset")
        self.episode += 1
        self.steps = 0
        self.allies_alive = True
        return self.get_obs(), self.get_state()

    def step(self, actions: list[int]) -> tuple[float, bool, dict]:
        self.calls.append("step")
        self.received_actions.append(list(actions))
        self.steps += 1
        reward = float(sum(actions))
        info: dict = {"battle_won": False, "dead_allies": 0, "dead_enemies": 0}
        terminated = False
        if self.steps == self.win_at:
            terminated = True
            reward += 10.0
            info.update(battle_won=True, dead_enemies=self.n_enemies)
            self.stats["battles_won"] += 1
            self.stats["battles_game"] += 1
        elif self.steps == self.lose_at:
            terminated = True
            self.allies_alive = False
            info.update(dead_allies=self.n_agents)
            self.stats["battles_game"] += 1
        elif self.steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
            self.stats["battles_game"] += 1
            self.stats["timeouts"] += 1
        return reward, terminated, info

    # --- observations ----------------------------------------------------------------------------
    def get_obs(self) -> list[np.ndarray]:
        self.calls.append("get_obs")
        return [self._obs(i) for i in range(self.n_agents)]

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        self.calls.append("get_obs_agent")
        return self._obs(agent_id)

    def _obs(self, agent_id: int) -> np.ndarray:
        if not self.allies_alive:
            return np.zeros(OBS_SIZE, dtype=np.float32)
        seed = self._seed or 0
        return np.array([self.episode, self.steps, agent_id, seed, 1.0], dtype=np.float32)

    def get_obs_size(self) -> int:
        self.calls.append("get_obs_size")
        return OBS_SIZE

    def get_state(self) -> np.ndarray:
        self.calls.append("get_state")
        return np.array([self.episode, self.steps, self._seed or 0, 7.0], dtype=np.float32)

    def get_state_size(self) -> int:
        self.calls.append("get_state_size")
        return STATE_SIZE

    def get_avail_actions(self) -> list[list[int]]:
        self.calls.append("get_avail_actions")
        return [self._avail(i) for i in range(self.n_agents)]

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        self.calls.append("get_avail_agent_actions")
        return self._avail(agent_id)

    def _avail(self, agent_id: int) -> list[int]:
        if not self.allies_alive:
            return [1] + [0] * (self.n_actions - 1)
        return [0, 1, 1, 1, 1, 1] + [int(e <= agent_id) for e in range(self.n_enemies)]

    def get_total_actions(self) -> int:
        self.calls.append("get_total_actions")
        return self.n_actions

    # --- bookkeeping -----------------------------------------------------------------------------
    def get_env_info(self) -> dict:
        self.calls.append("get_env_info")
        return {
            "state_shape": STATE_SIZE,
            "obs_shape": OBS_SIZE,
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def get_stats(self) -> dict:
        self.calls.append("get_stats")
        games = self.stats["battles_game"]
        return {**self.stats, "win_rate": self.stats["battles_won"] / games if games else 0.0}

    def seed(self) -> int | None:
        self.calls.append("seed")
        return self._seed

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True


def install_fake_smac(monkeypatch: pytest.MonkeyPatch) -> type[FakeStarCraft2Env]:
    """Make `import smac` / `from smac.env import StarCraft2Env` find the fake for one test.

    Returns the installed class; its `instances` lists every environment built during the test.
    """
    env_class = type("StarCraft2Env", (FakeStarCraft2Env,), {"instances": []})
    smac = types.ModuleType("smac")
    smac.__path__ = []  # a package, like the real one
    env_module = types.ModuleType("smac.env")
    env_module.StarCraft2Env = env_class  # type: ignore[attr-defined]
    smac.env = env_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "smac", smac)
    monkeypatch.setitem(sys.modules, "smac.env", env_module)
    return env_class
