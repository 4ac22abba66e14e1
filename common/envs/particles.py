"""MPE's cooperative navigation (simple_spread) as a numpy-vectorised world with continuous actions.

`SpreadBatchEnv` steps B independent simple_spread episodes held as arrays [B, n, 2]; nothing in a
step loops in Python over episodes or agents except drawing new starts (one generator per battle, so
that each replays mpe2's seeded episodes). Dynamics, observations, rewards, reset ranges and the
continuous action semantics are those of `mpe2`'s `simple_spread_v3` with `continuous_actions=True`
(mpe2 1.1.1: `simple_spread/simple_spread.py`, `_mpe_utils/core.py` World, `_mpe_utils/simple_env.py`
`_set_action`); tests/test_particle_world.py checks every observation and reward against the real
package. `SpreadEnv` is one episode behind SMAC's `StarCraft2Env` API.

The world: n agents (radius 0.15) and n landmarks start uniformly in [-1, 1]^2 with zero velocity.
An action is 5 numbers in [0, 1], [no_action, left, right, down, up]; the push is
5 * (right - left, up - down). Each step integrates position with the old velocity, damps the
velocity by 0.25 and adds (push + soft contact forces between agents) * dt, dt = 0.1, mass 1.
Every agent's reward is (1 - local_ratio) * global + local_ratio * local, global being minus the
sum over landmarks of the nearest agent's distance, local minus the number of other agents closer
than two radii. Episodes always run `max_cycles` steps; the end is a time limit, never a terminal.

Batch arithmetic is float64, as in mpe2, and observations are cast to float32 at the end as mpe2's
`observe` does, so the two agree to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.envs.protocol import BatchObservation, BatchStep, OneBattleView

# mpe2 constants, with where they are set.
AGENT_SIZE = 0.15  # simple_spread.Scenario.make_world
DT = 0.1  # core.World.__init__
DAMPING = 0.25  # core.World.__init__
CONTACT_FORCE = 1e2  # core.World.__init__
CONTACT_MARGIN = 1e-3  # core.World.__init__
SENSITIVITY = 5.0  # simple_env.SimpleEnv._set_action (agents have no `accel`)
COMM_DIM = 2  # world.dim_c: agents are silent, so their observed messages are zeros
ACTION_DIM = 5  # [no_action, move_left, move_right, move_down, move_up]
ACTION_LOW, ACTION_HIGH = 0.0, 1.0  # the Box each agent's action lives in
START_RANGE = 1.0  # simple_spread.Scenario.reset_world: uniform(-1, +1) for agents and landmarks
# The offline datasets made on this world: OMAR's kinds, then experts of several seeds mixed
# (deploy/studies/particle_datasets.py; a kind's index seeds its data, so new kinds go last).
DATASET_KINDS = ("expert", "medium", "medium_replay", "random", "mixed")


def obs_size(n_agents: int) -> int:
    """[own velocity, own position, landmarks relative, other agents relative, their messages]."""
    return 4 + 2 * n_agents + 2 * (n_agents - 1) + COMM_DIM * (n_agents - 1)


def action_push(actions: np.ndarray) -> np.ndarray:
    """Each agent's push [B, n, 2] float64 from its actions [B, n, 5] float32 in [0, 1].

    The differences are taken in float32, as mpe2 takes them from its float32 Box sample, then
    widened; action 0 (no_action) moves nothing."""
    push = np.empty(actions.shape[:-1] + (2,), dtype=np.float64)
    push[..., 0] = actions[..., 2] - actions[..., 1]
    push[..., 1] = actions[..., 4] - actions[..., 3]
    return push * SENSITIVITY


def pairwise(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets [B, n, n, 2] (other minus self: [b, i, j] = pos[b, j] - pos[b, i]) and distances
    [B, n, n] between agents, with an infinite distance from each agent to itself."""
    offset = pos[:, None, :, :] - pos[:, :, None, :]
    dist = _norm(offset)
    dist[:, np.arange(pos.shape[1]), np.arange(pos.shape[1])] = np.inf
    return offset, dist


def contact_forces(offset: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Soft repulsion [B, n, 2] on each agent from every other one (mpe2's
    `World.get_collision_force`: 100 * unit vector away * softplus penetration with margin 1e-3)."""
    penetration = np.logaddexp(0.0, -(dist - 2 * AGENT_SIZE) / CONTACT_MARGIN) * CONTACT_MARGIN
    # An agent is pushed away from the other: along self - other = -offset. Self pairs give 0
    # (offset 0, distance inf).
    return -np.einsum("bij,bijk->bik", CONTACT_FORCE * penetration / dist, offset)


def integrate(pos: np.ndarray, vel: np.ndarray, force: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of mpe2's `World.integrate_state` (mass 1, no speed limit): the position moves
    with the old velocity, then the velocity is damped and pushed."""
    return pos + vel * DT, vel * (1 - DAMPING) + force * DT


def observe(
    agent_pos: np.ndarray, agent_vel: np.ndarray, landmark_pos: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """Observations [B, n, obs_size] float32; `offset` is `pairwise(agent_pos)[0]`."""
    b_count, n = agent_pos.shape[:2]
    others = _others(n)
    obs = np.zeros((b_count, n, obs_size(n)), dtype=np.float32)
    obs[:, :, 0:2] = agent_vel
    obs[:, :, 2:4] = agent_pos
    to_landmarks = landmark_pos[:, None, :, :] - agent_pos[:, :, None, :]
    obs[:, :, 4 : 4 + 2 * n] = to_landmarks.reshape(b_count, n, 2 * n)
    to_others = offset[:, np.arange(n)[:, None], others]
    obs[:, :, 4 + 2 * n : 4 + 2 * n + 2 * (n - 1)] = to_others.reshape(b_count, n, 2 * (n - 1))
    # The rest: the other agents' messages, always zero (simple_spread's agents are silent).
    return obs


def agent_rewards(
    agent_pos: np.ndarray, landmark_pos: np.ndarray, dist: np.ndarray, local_ratio: float
) -> np.ndarray:
    """Each agent's mpe2 reward [B, n] float64; `dist` is `pairwise(agent_pos)[1]`."""
    to_landmarks = landmark_pos[:, None, :, :] - agent_pos[:, :, None, :]  # [B, agent, landmark, 2]
    nearest = _norm(to_landmarks).min(axis=1)  # [B, landmark]
    global_reward = -nearest.sum(axis=1)
    collisions = (dist < AGENT_SIZE + AGENT_SIZE).sum(axis=2)  # self pairs are at distance inf
    return global_reward[:, None] * (1 - local_ratio) - collisions * local_ratio


def _norm(vectors: np.ndarray) -> np.ndarray:
    """Lengths of [..., 2] vectors as mpe2 takes them, sqrt(x^2 + y^2) (not `hypot`, which rounds
    differently); written out because numpy's reductions over an axis of 2 are slow."""
    return np.sqrt(np.square(vectors[..., 0]) + np.square(vectors[..., 1]))


def _others(n: int) -> np.ndarray:
    """[n, n-1]: agent i's view of the others, in increasing index order (mpe2's `others`)."""
    return np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int64).reshape(n, n - 1)


@dataclass
class SpreadStep(BatchStep):
    """A `BatchStep` that also carries each agent's own mpe2 reward [B, n] float32 (their sum over
    agents is `reward`)."""

    agent_reward: np.ndarray


class SpreadBatchEnv:
    """B independent simple_spread episodes stepped together, with automatic reset.

    Episode starts in battle b come from `numpy.random.default_rng(seed + b)`, drawn exactly as
    mpe2 draws them, so battle b replays the episodes of mpe2's `env.reset(seed=seed + b)` followed by
    unseeded resets, given the same actions.
    """

    n_enemies = 0

    def __init__(
        self,
        num_envs: int,
        seed: int | None = None,
        n_agents: int = 3,
        max_cycles: int = 25,
        local_ratio: float = 0.5,
        *,
        auto_reset: bool = True,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if n_agents < 1:
            raise ValueError(f"n_agents must be at least 1, got {n_agents}")
        if max_cycles < 1:
            raise ValueError(f"max_cycles must be at least 1, got {max_cycles}")
        if not 0.0 <= local_ratio <= 1.0:
            raise ValueError(f"local_ratio must be in [0, 1], got {local_ratio}")
        self.num_envs = num_envs
        self.n_agents = n_agents
        self.n_actions = ACTION_DIM
        self.episode_limit = max_cycles
        self.local_ratio = float(local_ratio)
        self.auto_reset = auto_reset
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 62))
        self._seed = int(seed)
        self._rngs = [np.random.default_rng(self._seed + b) for b in range(num_envs)]
        shape = (num_envs, n_agents, 2)
        self.agent_pos = np.zeros(shape)
        self.agent_vel = np.zeros(shape)
        self.landmark_pos = np.zeros(shape)
        self.steps = np.zeros(num_envs, dtype=np.int64)  # steps taken in each battle's episode
        self._ended = np.zeros(num_envs, dtype=bool)
        self._started = False
        self._observation: BatchObservation | None = None
        self._agent_reward = np.zeros((num_envs, n_agents), dtype=np.float32)
        self.episodes = 0
        self.clipped_actions = 0

    # ------------------------------------------------------------------ public API
    def get_env_info(self) -> dict:
        size = obs_size(self.n_agents)
        return {
            "state_shape": self.n_agents * size,
            "obs_shape": size,
            "n_actions": ACTION_DIM,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
            "action_space": "box",
            "action_dim": ACTION_DIM,
            "action_low": ACTION_LOW,
            "action_high": ACTION_HIGH,
        }

    def get_stats(self) -> dict:
        """SMAC's counters (every episode ends by the time limit, none is won) and how many agent
        actions had a value outside [0, 1] and were clipped."""
        return {
            "battles_won": 0,
            "battles_game": self.episodes,
            "battles_draw": self.episodes,
            "win_rate": 0.0,
            "timeouts": self.episodes,
            "restarts": 0,
            "clipped_actions": self.clipped_actions,
        }

    def seed(self) -> int:
        return self._seed

    def close(self) -> None:
        pass

    def reset(self) -> BatchObservation:
        """Start a fresh episode in every battle."""
        self._started = True
        self._reset_rows(np.arange(self.num_envs))
        self._ended[:] = False
        self._observation = self._observe()
        return self._observation

    def observation(self) -> BatchObservation | None:
        return self._observation

    def last_agent_rewards(self) -> np.ndarray:
        """Each agent's reward [B, n] float32 from the last step."""
        return self._agent_reward.copy()

    def load_state(
        self,
        battle: int,
        agent_pos: np.ndarray,
        landmark_pos: np.ndarray,
        agent_vel: np.ndarray | None = None,
    ) -> BatchObservation:
        """Start a new episode in `battle` from the given positions [n, 2] (and velocities, zero
        by default); returns every battle's current observation."""
        if not self._started:
            raise RuntimeError("call reset() before load_state()")
        if not 0 <= battle < self.num_envs:
            raise ValueError(f"battle must be in [0, {self.num_envs}), got {battle}")
        vel = np.zeros((self.n_agents, 2)) if agent_vel is None else agent_vel
        for name, value in (("agent_pos", agent_pos), ("landmark_pos", landmark_pos), ("agent_vel", vel)):
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (self.n_agents, 2) or not np.isfinite(arr).all():
                raise ValueError(f"{name} must be finite with shape ({self.n_agents}, 2), got {arr.shape}")
        self.agent_pos[battle] = agent_pos
        self.landmark_pos[battle] = landmark_pos
        self.agent_vel[battle] = vel
        self.steps[battle] = 0
        self._ended[battle] = False
        self._observation = self._observe()
        return self._observation

    def step(self, actions: np.ndarray) -> SpreadStep:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self._ended.any():
            b = int(np.flatnonzero(self._ended)[0])
            raise RuntimeError(f"battle {b} has ended; call reset() before stepping it again")
        acts = self._checked(actions)
        offset, dist = pairwise(self.agent_pos)
        force = action_push(acts) + contact_forces(offset, dist)
        self.agent_pos, self.agent_vel = integrate(self.agent_pos, self.agent_vel, force)
        self.steps += 1
        offset, dist = pairwise(self.agent_pos)
        rewards = agent_rewards(self.agent_pos, self.landmark_pos, dist, self.local_ratio)
        self._agent_reward = rewards.astype(np.float32)
        obs = self._observe(offset)
        b_count = self.num_envs
        ended = self.steps >= self.episode_limit
        done = np.flatnonzero(ended)
        final = BatchObservation(obs.obs[done], obs.state[done], obs.avail[done])
        if done.size:
            self.episodes += int(done.size)
            if self.auto_reset:
                self._reset_rows(done)
                fresh = self._observe(rows=done)
                obs.obs[done], obs.state[done] = fresh.obs, fresh.state
            else:
                self._ended[done] = True
        self._observation = obs
        return SpreadStep(
            reward=rewards.sum(axis=1).astype(np.float32),
            terminated=ended,
            battle_won=np.zeros(b_count, dtype=bool),
            episode_limit=ended.copy(),
            dead_allies=np.zeros(b_count, dtype=np.int64),
            dead_enemies=np.zeros(b_count, dtype=np.int64),
            next=obs,
            done_index=done,
            final=final,
            agent_reward=self._agent_reward.copy(),
        )

    # ------------------------------------------------------------------ internals
    def _checked(self, actions) -> np.ndarray:
        """Actions as float32 [B, n, 5]. Like mpe2 (pettingzoo's ClipOutOfBoundsWrapper, which its
        continuous `env()` applies): a NaN is refused, a value outside [0, 1] is clipped into it
        (mpe2 also warns each time; here `get_stats()["clipped_actions"]` counts them)."""
        expected = (self.num_envs, self.n_agents, ACTION_DIM)
        if hasattr(actions, "detach"):  # a torch tensor, possibly on a GPU
            actions = actions.detach().cpu().numpy()
        try:
            acts = np.asarray(actions, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(
                f"actions must be numbers of shape {expected}, got {type(actions).__name__}"
            ) from None
        if acts.shape != expected:
            raise ValueError(
                f"actions must have shape [num_envs, n_agents, {ACTION_DIM}] = {expected} (values in "
                f"[{ACTION_LOW}, {ACTION_HIGH}]; others are clipped), got shape {acts.shape}"
            )
        nan = np.isnan(acts)
        if nan.any():
            b, agent, k = (int(i) for i in np.argwhere(nan)[0])
            raise ValueError(f"actions must not be NaN: battle {b}, agent {agent}, component {k}")
        outside = (acts < ACTION_LOW) | (acts > ACTION_HIGH)
        if outside.any():
            self.clipped_actions += int(outside.any(axis=-1).sum())
            acts = np.clip(acts, ACTION_LOW, ACTION_HIGH)
        return acts

    def _reset_rows(self, rows: np.ndarray) -> None:
        n = self.n_agents
        for b in rows.tolist():
            # mpe2 draws uniform(-1, 1, 2) per agent, then per landmark, from one stream: the same
            # numbers as one draw of 2n points.
            start = self._rngs[b].uniform(-START_RANGE, START_RANGE, (2 * n, 2))
            self.agent_pos[b] = start[:n]
            self.landmark_pos[b] = start[n:]
        self.agent_vel[rows] = 0.0
        self.steps[rows] = 0

    def _observe(self, offset: np.ndarray | None = None, rows: np.ndarray | None = None) -> BatchObservation:
        if rows is None:
            pos, vel, landmarks = self.agent_pos, self.agent_vel, self.landmark_pos
        else:
            pos, vel, landmarks = self.agent_pos[rows], self.agent_vel[rows], self.landmark_pos[rows]
        if offset is None:
            offset = pairwise(pos)[0]
        obs = observe(pos, vel, landmarks, offset)
        return BatchObservation(
            obs=obs,
            state=obs.reshape(obs.shape[0], -1).copy(),  # mpe2's state(): the agents' observations
            avail=np.ones((obs.shape[0], self.n_agents, ACTION_DIM), dtype=bool),
        )


class SpreadEnv(OneBattleView):
    """One simple_spread episode at a time with SMAC's `StarCraft2Env` methods; after an episode
    ends (`terminated`, with `info["episode_limit"]` True), call `reset()`. Actions are [n, 5]."""

    n_enemies = 0

    def __init__(
        self, seed: int | None = None, n_agents: int = 3, max_cycles: int = 25, local_ratio: float = 0.5
    ):
        self._engine = SpreadBatchEnv(1, seed, n_agents, max_cycles, local_ratio, auto_reset=False)
        self.n_agents = n_agents
        self.episode_limit = max_cycles
        self.n_actions = ACTION_DIM

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        self._engine.reset()
        return self.get_obs(), self.get_state()

    def step(self, actions) -> tuple[float, bool, dict]:
        if hasattr(actions, "detach"):
            actions = actions.detach().cpu().numpy()
        result = self._engine.step([actions])  # checked (shape, NaN, clipping) by the batch
        ended = bool(result.terminated[0])
        info = {"battle_won": False, "dead_allies": 0, "dead_enemies": 0}
        if ended:
            info["episode_limit"] = True
        return float(result.reward[0]), ended, info
