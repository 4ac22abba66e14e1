"""Episodes recorded from a batch of battles follow PyMARL's layout exactly."""

from __future__ import annotations

import numpy as np

from common.envs.lite import LiteBatchEnv
from common.envs.maps import get_map
from common.envs.policies import make_policy
from common.episode import EpisodeBuilder, EpisodeMeta, pad_episodes, to_training_batch


def collect(map_name="3m", num_envs=4, episodes=8, limit=None):
    env = LiteBatchEnv(map_name, num_envs=num_envs, seed=0)
    if limit:
        env.episode_limit = limit
    policy = make_policy("heuristic", env.layout, get_map(map_name), seed=0, epsilon=0.3)
    builder = EpisodeBuilder(num_envs, env.n_agents, env.episode_limit)
    obs = env.reset()
    builder.start(obs.state, obs.obs, obs.avail)
    done = []
    while len(done) < episodes:
        actions = policy.act(obs.obs, obs.avail)
        step = env.step(actions)
        done += builder.record(actions, step, meta_for=lambda b: EpisodeMeta(actor_id=7, policy_version=3))
        obs = step.next
    return env, done


def test_recorded_episodes_follow_pymarl_layout():
    env, episodes = collect()
    for ep in episodes:
        L = ep.length
        assert 1 <= L <= env.episode_limit
        assert ep.state.shape == (L + 1, env.layout.state_size)
        assert ep.obs.shape == (L + 1, env.n_agents, env.layout.obs_size)
        assert ep.actions.shape == (L + 1, env.n_agents, 1) and not ep.actions[L].any()
        assert ep.filled.all()
        taken = np.take_along_axis(ep.avail_actions[:L], ep.actions[:L], axis=2)
        assert taken.all(), "every recorded action was available when it was taken"
        assert not ep.terminated[: L - 1].any()
        assert ep.terminated[L - 1, 0] == 1  # 3m battles end by win or loss well before the limit
        assert np.isclose(ep.reward.sum(), ep.meta.episode_return, atol=1e-4)
        assert ep.meta.actor_id == 7 and ep.meta.policy_version == 3
        assert ep.meta.battle_won == (ep.meta.episode_return > 19.99)


def test_time_limit_ends_are_not_terminal():
    _, episodes = collect(limit=5)
    assert all(ep.length == 5 for ep in episodes)
    assert not any(ep.terminated.any() for ep in episodes)


def test_padding_to_the_longest_episode_marks_padding_unfilled():
    _, episodes = collect()
    arrays = pad_episodes(episodes)
    longest = max(ep.length for ep in episodes)
    assert arrays["obs"].shape[:2] == (len(episodes), longest + 1)
    for i, ep in enumerate(episodes):
        assert arrays["filled"][i, : ep.length + 1].all() and not arrays["filled"][i, ep.length + 1 :].any()
    batch = to_training_batch(episodes)
    assert batch.batch_size == len(episodes) and batch.max_seq_length == longest + 1
    assert batch.avail_actions.dtype.is_floating_point is False and batch.filled.dtype.is_floating_point
    assert not batch.offline.any() and (batch.policy_version == 3).all()
