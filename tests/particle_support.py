"""A tiny particle-world transition dataset for the tests of the continuous methods and commands."""

from __future__ import annotations

import numpy as np

from common.envs.particles import SpreadBatchEnv
from deploy.continuous_training import step_transitions
from replay.transition_dataset import write_transition_dataset

# The returns that score a policy 0 and 100 (made-up round numbers around simple_spread's).
CARD = {
    "map": "simple_spread",
    "action_low": 0.0,
    "action_high": 1.0,
    "random_return": -110.0,
    "expert_return": -40.0,
}


def write_random_dataset(path, kind: str = "random", map_name: str = "simple_spread") -> str:
    """200 transitions of uniform random actions (8 episodes of 25 steps), with a card."""
    env = SpreadBatchEnv(8, seed=0, max_cycles=25)
    rng = np.random.default_rng(0)
    obs, parts = env.reset(), []
    for _ in range(25):
        actions = rng.uniform(0, 1, (8, 3, 5)).astype(np.float32)
        step = env.step(actions)
        parts.append(step_transitions(obs, actions, step))
        obs = step.next
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return str(write_transition_dataset(path, arrays, {**CARD, "map": map_name, "kind": kind}))
