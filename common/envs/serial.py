"""The `BatchEnv` contract over B separate single-battle environments, stepped one after another.

Real StarCraft II runs one battle per game process, so SC2 batches are built this way; tests also
use it as the plain reference the vectorised lite world must agree with.

How a time-limit end is recognised (`BatchStep.episode_limit`): SMAC reports
`info["episode_limit"] = True` only when `continuing_episode` is on. Otherwise an episode counts as
ended by the time limit when it terminated after exactly `env.episode_limit` steps (counted here since
the last reset) with no win and neither side wiped out, which is SMAC's own rule: win and loss are
checked before the step limit. One corner is misread: an MMM loss by being left with only a Medivac on
the very last step looks like a time-limit end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.envs.actions import validate_actions
from common.envs.protocol import BatchObservation, BatchStep, MultiAgentEnv

_STAT_COUNTERS = ("battles_won", "battles_game", "battles_draw", "timeouts", "restarts")


class SerialBatchEnv:
    """B independent battles, each its own `MultiAgentEnv`, with automatic reset."""

    def __init__(self, envs: Sequence[MultiAgentEnv]) -> None:
        if not envs:
            raise ValueError("SerialBatchEnv needs at least one environment")
        self._envs = list(envs)
        infos = [env.get_env_info() for env in self._envs]
        if any(info != infos[0] for info in infos[1:]):
            raise ValueError(f"all environments of a batch must have the same shapes, got {infos}")
        self._info = dict(infos[0])
        self.num_envs = len(self._envs)
        self.n_agents = int(self._info["n_agents"])
        self.n_actions = int(self._info["n_actions"])
        self.episode_limit = int(self._info["episode_limit"])
        self.n_enemies = int(self._envs[0].n_enemies)
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._avail: np.ndarray | None = None

    def get_env_info(self) -> dict:
        return dict(self._info)

    def reset(self) -> BatchObservation:
        for env in self._envs:
            env.reset()
        self._steps[:] = 0
        current = _stack([_observe(env) for env in self._envs])
        self._avail = current.avail
        return current

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._avail is None:
            raise RuntimeError("call reset() before step()")
        acts = validate_actions(actions, self._avail, self.n_actions)
        b_count = self.num_envs
        reward = np.zeros(b_count, dtype=np.float32)
        terminated = np.zeros(b_count, dtype=bool)
        won = np.zeros(b_count, dtype=bool)
        limit = np.zeros(b_count, dtype=bool)
        dead_allies = np.zeros(b_count, dtype=np.int64)
        dead_enemies = np.zeros(b_count, dtype=np.int64)
        nexts: list[BatchObservation] = []
        finals: list[BatchObservation] = []

        for b, env in enumerate(self._envs):
            r, term, info = env.step([int(a) for a in acts[b]])
            self._steps[b] += 1
            reward[b] = r
            terminated[b] = bool(term)
            won[b] = bool(info.get("battle_won", False))
            dead_allies[b] = int(info.get("dead_allies", 0))
            dead_enemies[b] = int(info.get("dead_enemies", 0))
            if terminated[b]:
                limit[b] = self._ended_by_time_limit(env, info, b, won[b], dead_allies[b], dead_enemies[b])
                finals.append(_observe(env))
                env.reset()
                self._steps[b] = 0
            nexts.append(_observe(env))

        done_index = np.flatnonzero(terminated)
        nxt = _stack(nexts)
        self._avail = nxt.avail
        final = _stack(finals) if finals else self._empty_observation()
        return BatchStep(
            reward=reward,
            terminated=terminated,
            battle_won=won,
            episode_limit=limit,
            dead_allies=dead_allies,
            dead_enemies=dead_enemies,
            next=nxt,
            done_index=done_index,
            final=final,
        )

    def _ended_by_time_limit(
        self, env: MultiAgentEnv, info: dict, b: int, won: bool, dead_allies: int, dead_enemies: int
    ) -> bool:
        if info.get("episode_limit", False):
            return True
        wiped_out = dead_allies >= self.n_agents or dead_enemies >= self.n_enemies
        return bool(self._steps[b] >= env.episode_limit and not won and not wiped_out)

    def _empty_observation(self) -> BatchObservation:
        n, obs_size, state_size = self.n_agents, int(self._info["obs_shape"]), int(self._info["state_shape"])
        return BatchObservation(
            obs=np.zeros((0, n, obs_size), dtype=np.float32),
            state=np.zeros((0, state_size), dtype=np.float32),
            avail=np.zeros((0, n, self.n_actions), dtype=bool),
        )

    def get_stats(self) -> dict:
        """SMAC's counters summed over all battles, with the win rate recomputed from the sums."""
        stats = [env.get_stats() for env in self._envs]
        total = {key: sum(int(s.get(key, 0)) for s in stats) for key in _STAT_COUNTERS}
        games = total["battles_game"]
        total["win_rate"] = total["battles_won"] / games if games else 0.0
        return total

    def close(self) -> None:
        for env in self._envs:
            env.close()


def _observe(env: MultiAgentEnv) -> BatchObservation:
    """One battle's current view as unbatched arrays: obs [n, O], state [S], avail [n, A]."""
    return BatchObservation(
        obs=np.asarray(env.get_obs(), dtype=np.float32),
        state=np.asarray(env.get_state(), dtype=np.float32),
        avail=np.asarray(env.get_avail_actions()).astype(bool),
    )


def _stack(views: list[BatchObservation]) -> BatchObservation:
    return BatchObservation(
        obs=np.stack([v.obs for v in views]),
        state=np.stack([v.state for v in views]),
        avail=np.stack([v.avail for v in views]),
    )
