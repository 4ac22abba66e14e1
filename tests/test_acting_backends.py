"""Actors run the agent network's one-step forward through torch or numpy (`actor.inference`):
whichever is faster on the machine, with the same play."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from actors.rollout import RolloutWorker
from common.envs.lite import LiteBatchEnv
from common.networks import agent_network


def test_both_acting_back_ends_play_the_same_episodes():
    torch.manual_seed(5)
    agent = agent_network(LiteBatchEnv("3m", num_envs=1).get_env_info())
    played = {}
    for inference in ("numpy", "torch"):
        env = LiteBatchEnv("3m", num_envs=4, seed=3)
        worker = RolloutWorker(env, copy.deepcopy(agent), seed=1, inference=inference)
        played[inference] = worker.run_episodes(8, epsilon=0.3)
    for a, b in zip(played["numpy"], played["torch"], strict=True):
        assert np.array_equal(a.actions, b.actions) and a.meta.battle_won == b.meta.battle_won


def test_the_builder_gives_workers_the_configured_back_end():
    from actors.numpy_agent import NumpyAgent
    from actors.torch_agent import TorchAgent
    from common.config import resolve_config
    from deploy.builder import Builder

    for inference, kind in (("numpy", NumpyAgent), ("torch", TorchAgent)):
        cfg = resolve_config(map_name="3m", method="qmix", overrides=[f"actor.inference={inference}"])
        worker = Builder(cfg).actor_worker(0)
        assert all(isinstance(a, kind) for a in worker._acting.values())


def test_an_unknown_acting_back_end_is_refused_by_name():
    from common.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match="actor.inference"):
        resolve_config(overrides=["actor.inference=jax"])
