"""A scripted `BatchEnv` whose episode length depends on the outcome, for testing evaluation.

What the world does, so tests can predict every value:
- battle b's j-th episode (j counts every episode the battle starts, by `reset()` or by automatic
  reset) is won if `wins(b, j)`; by default with probability `p_win`, drawn from an RNG seeded with
  (seed, b, j), so an outcome never depends on how the battles were stepped;
- a won episode ends (terminated) after `win_steps` steps, a lost one after `loss_steps`; the
  reward is 1 on the last step of a won episode and 0 otherwise, so the return is 1 or 0;
- state = [b, j, t, fresh]: battle, episode number, step within the episode, and 1 when the
  episode was started by `reset()` (the first of its round) rather than by an automatic reset;
- obs are uniform noise from an RNG seeded with `seed`, every action is always available; each
  ended episode's observations and the actions it received are kept in `trajectories`.
"""

from __future__ import annotations

import numpy as np

from common.envs.protocol import BatchObservation, BatchStep

OBS_SIZE = 4
STATE_SIZE = 4


class ScriptedBattles:
    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        p_win: float = 0.5,
        win_steps: int = 40,
        loss_steps: int = 5,
        wins=None,
        n_agents: int = 2,
        n_actions: int = 5,
    ):
        self.num_envs, self.n_agents, self.n_enemies, self.n_actions = num_envs, n_agents, n_agents, n_actions
        self.episode_limit = max(win_steps, loss_steps)
        self.seed, self.p_win = seed, p_win
        self.win_steps, self.loss_steps = win_steps, loss_steps
        self.wins = wins or self._seeded_win
        self._noise = np.random.default_rng(seed)
        self._episode = np.full(num_envs, -1, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._fresh = np.zeros(num_envs, dtype=bool)
        self._won = np.zeros(num_envs, dtype=bool)
        self._obs = np.zeros((num_envs, n_agents, OBS_SIZE), dtype=np.float32)
        # Each running episode's observations and the actions it received, until it ends.
        self._played: list[tuple[list, list]] = [([], []) for _ in range(num_envs)]
        self.trajectories: list[dict] = []

    def _seeded_win(self, b: int, j: int) -> bool:
        return bool(np.random.default_rng([self.seed, b, j]).random() < self.p_win)

    def get_env_info(self) -> dict:
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_shape": OBS_SIZE,
            "state_shape": STATE_SIZE,
            "episode_limit": self.episode_limit,
        }

    def _start(self, b: int, fresh: bool) -> None:
        self._episode[b] += 1
        self._t[b] = 0
        self._fresh[b] = fresh
        self._won[b] = self.wins(b, int(self._episode[b]))
        self._obs[b] = self._noise.random((self.n_agents, OBS_SIZE))
        self._played[b] = ([self._obs[b].copy()], [])

    def _observe(self, rows=slice(None)) -> BatchObservation:
        state = np.stack([np.arange(self.num_envs), self._episode, self._t, self._fresh], axis=1)
        avail = np.ones((self.num_envs, self.n_agents, self.n_actions), dtype=bool)
        return BatchObservation(self._obs[rows].copy(), state[rows].astype(np.float32), avail[rows])

    def reset(self) -> BatchObservation:
        for b in range(self.num_envs):
            self._start(b, fresh=True)
        return self._observe()

    def step(self, actions: np.ndarray) -> BatchStep:
        B = self.num_envs
        self._t += 1
        self._obs[:] = self._noise.random(self._obs.shape)
        for b in range(B):
            self._played[b][0].append(self._obs[b].copy())
            self._played[b][1].append(np.array(actions[b]))
        ended = self._t >= np.where(self._won, self.win_steps, self.loss_steps)
        won = ended & self._won
        done = np.flatnonzero(ended)
        final = self._observe(done)  # the last observation of each ended episode, before its reset
        for b in done.tolist():
            obs, acts = self._played[b]
            self.trajectories.append({"battle": b, "obs": np.stack(obs), "actions": np.stack(acts)})
            self._start(b, fresh=False)
        return BatchStep(
            reward=won.astype(np.float32),
            terminated=ended,
            battle_won=won,
            episode_limit=np.zeros(B, dtype=bool),
            dead_allies=np.zeros(B, dtype=np.int64),
            dead_enemies=np.zeros(B, dtype=np.int64),
            next=self._observe(),
            done_index=done,
            final=final,
        )

    def get_stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass
