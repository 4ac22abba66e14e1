"""Actors run the agent network's one-step forward through torch, numpy or the compiled kernel on AMX
tiles (`actor.inference`): whichever is faster on the machine, with the same play (tiles: the same
values within bf16 rounding)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from actors import tiles_agent
from actors.rollout import RolloutWorker
from common.envs.lite import LiteBatchEnv
from common.networks import RNNAgent, agent_network

needs_tiles = pytest.mark.skipif(
    not tiles_agent.available(), reason="this CPU (or kernel build) has no AMX tiles: actors use torch"
)


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


@needs_tiles
@pytest.mark.parametrize("rows", [1, 37, 512])  # a partial block of 16 rows, and an actor's 64 battles
def test_the_tiles_step_gives_torchs_values_within_bf16_rounding(rows):
    from actors.tiles_agent import TilesAgent
    from actors.torch_agent import TorchAgent

    torch.manual_seed(7)
    agent = RNNAgent(45, 14, hidden_size=64)  # an input width that does not fill a tile
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((rows, 45)).astype(np.float32)
    hidden = (0.5 * rng.standard_normal((rows, 64))).astype(np.float32)
    q, h = TilesAgent(agent).step(inputs, hidden)
    q_ref, h_ref = TorchAgent(agent).step(inputs, hidden)
    assert q.shape == q_ref.shape and h.shape == h_ref.shape and q.dtype == np.float32
    assert np.abs(q - q_ref).max() < 0.02 and np.abs(h - h_ref).max() < 0.02
    assert not np.array_equal(q, q_ref)  # it did run in bf16


def test_auto_acts_on_tiles_only_with_amx_a_bf16_learner_and_a_shared_network():
    from common.config import resolve_config
    from deploy.builder import Builder

    def back_end(*overrides):
        return Builder(
            resolve_config(map_name="3m", method="qmix", overrides=list(overrides))
        ).acting_back_end()

    on_tiles = "tiles" if tiles_agent.available() else "torch"
    assert back_end("actor.inference=auto", "learner.precision=bf16") == on_tiles
    assert back_end("actor.inference=auto", "learner.precision=auto") == on_tiles
    assert back_end("actor.inference=auto", "learner.precision=fp32") == "torch"  # the default: fp32 acting
    assert back_end("actor.inference=numpy", "learner.precision=bf16") == "numpy"
