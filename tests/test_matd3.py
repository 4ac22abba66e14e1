"""MATD3, the online learner that makes the continuous worlds' datasets, its transition buffer and its
trainer: TD3's target, learning a one-step task, checkpoints that continue exactly, the buffer's
order, and transitions that end with the episode's own last observation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from common.envs.particles import SpreadBatchEnv
from common.errors import InputError
from common.transitions import TransitionBatch
from deploy.continuous_training import ContinuousRunConfig, step_transitions, train_matd3
from learner.matd3_learner import MATD3Config, MATD3Learner, td3_target
from replay.transition_buffer import TransitionBuffer

TARGET_INFO = {
    "n_agents": 2,
    "obs_shape": 2,
    "state_shape": 4,
    "action_space": "box",
    "action_dim": 2,
    "action_low": -1.0,
    "action_high": 1.0,
}


def target_batch(rng: np.random.Generator, size: int, terminal: bool = True) -> TransitionBatch:
    """A one-step task: each agent sees a point and is rewarded for standing on it."""
    obs = rng.uniform(-0.8, 0.8, (size, 2, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, (size, 2, 2)).astype(np.float32)
    reward = -np.square(actions - obs).sum(axis=(1, 2)).astype(np.float32)
    state = obs.reshape(size, 4)
    return TransitionBatch.from_arrays(
        obs=obs,
        state=state,
        actions=actions,
        reward=reward,
        next_obs=obs,
        next_state=state,
        terminal=np.full(size, terminal),
    )


def test_the_target_is_the_smaller_twin_and_stops_at_a_true_end():
    reward = torch.tensor([1.0, 1.0])
    terminal = torch.tensor([False, True])
    target = td3_target(reward, terminal, torch.tensor([5.0, 5.0]), torch.tensor([3.0, 9.0]), gamma=0.5)
    assert target.tolist() == [1.0 + 0.5 * 3.0, 1.0]


def test_it_learns_to_stand_on_the_point_it_sees():
    rng = np.random.default_rng(0)
    learner = MATD3Learner(TARGET_INFO, MATD3Config(lr=3e-3, hidden=32), seed=0)
    probe = target_batch(np.random.default_rng(1), 256)

    def error() -> float:
        return float(np.abs(learner.act(probe.obs.numpy()) - probe.obs.numpy()).mean())

    before = error()
    for _ in range(300):
        learner.update(target_batch(rng, 64))
    assert error() < 0.1 < before


def test_a_checkpoint_continues_exactly_and_loads_without_pickle():
    rng = np.random.default_rng(0)
    batches = [target_batch(rng, 32, terminal=False) for _ in range(6)]  # bootstrapping: targets count
    learner = MATD3Learner(TARGET_INFO, seed=3)
    for batch in batches[:3]:
        learner.update(batch)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    resumed = MATD3Learner(TARGET_INFO, seed=99)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for batch in batches[3:]:
        assert learner.update(batch) == resumed.update(batch)
    obs = batches[0].obs.numpy()
    np.testing.assert_array_equal(learner.act(obs), resumed.act(obs))


def test_it_refuses_a_discrete_world_and_a_checkpoint_of_another_shape():
    with pytest.raises(InputError, match="action_space='discrete'"):
        MATD3Learner({**TARGET_INFO, "action_space": "discrete"})
    other = MATD3Learner({**TARGET_INFO, "obs_shape": 3})
    with pytest.raises(InputError, match="networks of shape"):
        MATD3Learner(TARGET_INFO).load_state_dict(other.state_dict())


def test_actions_stay_in_the_worlds_box_with_exploration_noise():
    info = {**TARGET_INFO, "action_low": 0.0, "action_high": 1.0}
    actions = MATD3Learner(info).act(np.zeros((64, 2, 2), np.float32), 5.0, np.random.default_rng(0))
    assert actions.min() >= 0.0 and actions.max() <= 1.0 and actions.std() > 0.3


def fill(buffer: TransitionBuffer, first: int, count: int) -> None:
    values = np.arange(first, first + count, dtype=np.float32)
    buffer.add(
        obs=np.repeat(values[:, None, None], 1, 1),
        state=values[:, None],
        actions=values[:, None, None],
        reward=values,
        next_obs=values[:, None, None],
        next_state=values[:, None],
        terminal=np.zeros(count, bool),
    )


def test_the_buffer_overwrites_its_oldest_and_lists_what_it_holds_oldest_first():
    buffer = TransitionBuffer(5, n_agents=1, obs_size=1, state_size=1, action_size=1)
    fill(buffer, 0, 3)
    fill(buffer, 3, 4)
    assert buffer.size == 5 and buffer.added == 7
    assert buffer.arrays()["reward"].tolist() == [2, 3, 4, 5, 6]
    assert set(buffer.sample(64).reward.tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}


def test_the_buffer_names_the_field_of_the_wrong_shape():
    buffer = TransitionBuffer(5, n_agents=1, obs_size=1, state_size=1, action_size=1)
    with pytest.raises(InputError, match="state has shape"):
        buffer.add(
            obs=np.zeros((2, 1, 1)),
            state=np.zeros((2, 3)),
            actions=np.zeros((2, 1, 1)),
            reward=np.zeros(2),
            next_obs=np.zeros((2, 1, 1)),
            next_state=np.zeros((2, 1)),
            terminal=np.zeros(2, bool),
        )


def test_an_ended_episode_ends_on_its_own_last_observation_and_a_time_limit_is_not_terminal():
    env = SpreadBatchEnv(3, seed=0, max_cycles=2)
    obs = env.reset()
    actions = np.full((3, 3, 5), 0.5, np.float32)
    env.step(actions)
    before_end = env.observation()
    step = env.step(actions)
    arrays = step_transitions(before_end, actions, step)
    np.testing.assert_array_equal(arrays["next_obs"], step.final.obs)
    assert not np.array_equal(arrays["next_obs"], step.next.obs)  # the reset's observation is not it
    assert not arrays["terminal"].any()
    assert obs.obs.shape == arrays["obs"].shape


def test_the_trainer_takes_one_update_per_so_many_transitions_and_keeps_its_snapshots():
    cfg = ContinuousRunConfig(
        env_steps=600,
        num_envs=8,
        batch_size=32,
        transitions_per_update=10,
        warmup=100,
        eval_interval=300,
        eval_episodes=4,
        matd3=MATD3Config(hidden=16),
    )
    run = train_matd3(lambda n, s: SpreadBatchEnv(n, seed=s, max_cycles=5), cfg, progress=lambda _: None)
    assert run.buffer.added == 600
    assert run.learner.updates == 50  # (600 - 100) / 10
    assert [s.env_steps for s in run.snapshots] == [304, 600]


def fixed_action_batch(rng: np.random.Generator, size: int) -> TransitionBatch:
    """The target task's rewards on data that always plays the box's centre."""
    obs = rng.uniform(-0.8, 0.8, (size, 2, 2)).astype(np.float32)
    actions = np.zeros((size, 2, 2), np.float32)
    state = obs.reshape(size, 4)
    return TransitionBatch.from_arrays(
        obs=obs,
        state=state,
        actions=actions,
        reward=-np.square(actions - obs).sum(axis=(1, 2)).astype(np.float32),
        next_obs=obs,
        next_state=state,
        terminal=np.ones(size, bool),
    )


def test_behaviour_cloning_copies_the_data_and_a_small_bc_alpha_keeps_matd3_near_it():
    rng = np.random.default_rng(0)
    probe = target_batch(np.random.default_rng(1), 256).obs.numpy()
    cloner = MATD3Learner(TARGET_INFO, MATD3Config(lr=3e-3, hidden=32), seed=0)
    anchored = MATD3Learner(TARGET_INFO, MATD3Config(lr=3e-3, hidden=32, bc_alpha=0.01), seed=0)
    for _ in range(200):
        batch = fixed_action_batch(rng, 64)
        cloner.update_behaviour_cloning(batch)
        anchored.update(batch)
    assert np.abs(cloner.act(probe)).mean() < 0.05  # the data's action is 0 everywhere
    assert np.abs(anchored.act(probe)).mean() < 0.1  # the reward would pull it to the observation
