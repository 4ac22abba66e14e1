"""Online MATD3 on a continuous (box-action) world: the trainer that makes the particle worlds'
behaviour policies, snapshots and replay buffers, from which their offline datasets are drawn.

One process: B episodes stepped together, every transition into a `TransitionBuffer`, one MATD3
update per `transitions_per_update` transitions once `warmup` are stored, a greedy evaluation every
`eval_interval` transitions whose actors are kept as a snapshot (with how many transitions the
buffer had then, so a medium-replay dataset is the buffer up to a snapshot).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from common.envs.protocol import BatchEnv
from common.errors import InputError
from learner.matd3_learner import MATD3Config, MATD3Learner
from replay.transition_buffer import TransitionBuffer


@dataclass(frozen=True)
class ContinuousRunConfig:
    env_steps: int = 1_000_000  # transitions collected (team steps, not agent steps)
    num_envs: int = 32
    batch_size: int = 1024  # MADDPG/OMAR's MPE batch
    transitions_per_update: int = 50  # MADDPG updates every 100 agent-steps; half that here
    warmup: int = 10_000  # random-action transitions before the first update
    eval_interval: int = 50_000
    eval_episodes: int = 64
    seed: int = 0
    matd3: MATD3Config = field(default_factory=MATD3Config)

    def __post_init__(self) -> None:
        for name in (
            "env_steps",
            "num_envs",
            "batch_size",
            "transitions_per_update",
            "eval_interval",
            "eval_episodes",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"warmup: must be at least 0, got {self.warmup}")


@dataclass
class Snapshot:
    """The actors at an evaluation, what they scored and how full the buffer was then."""

    env_steps: int
    mean_return: float
    buffer_transitions: int
    actors: dict[str, torch.Tensor]


@dataclass
class ContinuousRun:
    learner: MATD3Learner
    buffer: TransitionBuffer
    snapshots: list[Snapshot]


def step_transitions(obs, actions: np.ndarray, step) -> dict[str, np.ndarray]:
    """The B transitions of one batch step: an ended episode's next observation is its last one
    (`step.final`), not the reset's; only a true end (not the time limit) is terminal."""
    next_obs, next_state = step.next.obs.copy(), step.next.state.copy()
    next_obs[step.done_index] = step.final.obs
    next_state[step.done_index] = step.final.state
    return {
        "obs": obs.obs.astype(np.float32),
        "state": obs.state.astype(np.float32),
        "actions": actions.astype(np.float32),
        "reward": step.reward.astype(np.float32),
        "next_obs": next_obs.astype(np.float32),
        "next_state": next_state.astype(np.float32),
        "terminal": step.terminated & ~step.episode_limit,
    }


def evaluate_returns(act: Callable[[np.ndarray], np.ndarray], env: BatchEnv, episodes: int) -> np.ndarray:
    """Team returns of `episodes` complete episodes played by `act` (obs [B, n, O] -> actions)."""
    returns: list[float] = []
    running = np.zeros(env.num_envs)
    obs = env.reset()
    while len(returns) < episodes:
        step = env.step(act(obs.obs))
        running += step.reward
        for b in step.done_index.tolist():
            returns.append(float(running[b]))
            running[b] = 0.0
        obs = step.next
    return np.asarray(returns[:episodes])


def random_actions(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(np.float32)


def train_matd3(
    make_env: Callable[[int, int], BatchEnv],
    cfg: ContinuousRunConfig,
    progress: Callable[[str], None] = print,
) -> ContinuousRun:
    """Train MATD3 online; `make_env(num_envs, seed)` builds the world (training and evaluation get
    different seeds)."""
    env = make_env(cfg.num_envs, cfg.seed)
    eval_env = make_env(min(cfg.eval_episodes, 64), cfg.seed + 1_000_003)
    info = env.get_env_info()
    learner = MATD3Learner(info, cfg.matd3, seed=cfg.seed)
    buffer = TransitionBuffer(
        cfg.env_steps,
        info["n_agents"],
        info["obs_shape"],
        info["state_shape"],
        info["action_dim"],
        seed=cfg.seed,
    )
    rng = np.random.default_rng(cfg.seed)
    low, high = info["action_low"], info["action_high"]
    shape = (env.num_envs, info["n_agents"], info["action_dim"])
    snapshots: list[Snapshot] = []

    def snapshot() -> None:
        returns = evaluate_returns(learner.act, eval_env, cfg.eval_episodes)
        actors = {k: v.detach().clone() for k, v in learner.actors.state_dict().items()}
        snapshots.append(Snapshot(buffer.added, float(returns.mean()), buffer.added, actors))
        rate = buffer.added / max(time.perf_counter() - start, 1e-9)
        eta = (cfg.env_steps - buffer.added) / max(rate, 1e-9)
        progress(
            f"matd3 {buffer.added:,}/{cfg.env_steps:,} steps: return {returns.mean():.2f} "
            f"({cfg.eval_episodes} episodes), {learner.updates:,} updates, {rate:,.0f} steps/s, "
            f"ETA {eta / 60:.1f} min"
        )

    start = time.perf_counter()
    obs = env.reset()
    owed = 0.0  # updates due and not yet taken
    next_eval = cfg.eval_interval
    while buffer.added < cfg.env_steps:
        if buffer.added < cfg.warmup:
            actions = random_actions(rng, shape, low, high)
        else:
            actions = learner.act(obs.obs, cfg.matd3.exploration_noise, rng)
        step = env.step(actions)
        take = min(env.num_envs, cfg.env_steps - buffer.added)
        arrays = step_transitions(obs, actions, step)
        buffer.add(**{k: v[:take] for k, v in arrays.items()})
        obs = step.next
        if buffer.added >= cfg.warmup and buffer.size >= cfg.batch_size:
            owed += take / cfg.transitions_per_update
            while owed >= 1:
                learner.update(buffer.sample(cfg.batch_size))
                owed -= 1
        if buffer.added >= next_eval:
            snapshot()
            next_eval += cfg.eval_interval
    if not snapshots or snapshots[-1].env_steps != buffer.added:
        snapshot()
    return ContinuousRun(learner, buffer, snapshots)
