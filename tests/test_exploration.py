"""Sequential exploration explores as many agents as the paper says, and only ever available actions."""

from __future__ import annotations

import numpy as np
import pytest

from actors.exploration import exploring_agents, greedy_actions, sampled_actions, select_actions

B, N, A = 20_000, 5, 7


def full_avail(batch=B, n=N, a=A):
    avail = np.ones((batch, n, a), dtype=bool)
    avail[..., 0] = False  # live agents: no-op unavailable
    return avail


def test_decentralized_se_explores_each_agent_with_epsilon_over_n():
    rng = np.random.default_rng(0)
    eps = 0.5
    explore = exploring_agents(rng, full_avail(), eps, "decentralized_se")
    per_agent = explore.mean(axis=0)
    assert np.allclose(per_agent, eps / N, atol=0.01)
    assert explore.sum(axis=1).mean() == pytest.approx(eps, abs=0.02)  # epsilon agents per step
    assert (explore.sum(axis=1) >= 2).any()  # independent: sometimes two at once


def test_centralized_se_explores_exactly_one_agent_with_probability_epsilon():
    rng = np.random.default_rng(1)
    eps = 0.3
    explore = exploring_agents(rng, full_avail(), eps, "centralized_se")
    counts = explore.sum(axis=1)
    assert set(np.unique(counts)) <= {0, 1}
    assert counts.mean() == pytest.approx(eps, abs=0.015)
    assert np.allclose(explore.mean(axis=0), eps / N, atol=0.01)  # the explorer is uniform


def test_centralized_se_never_picks_a_dead_agent():
    rng = np.random.default_rng(2)
    avail = full_avail()
    avail[:, 0] = False
    avail[:, 0, 0] = True  # agent 0 is dead: only no-op
    explore = exploring_agents(rng, avail, 1.0, "centralized_se")
    assert not explore[:, 0].any() and (explore.sum(axis=1) == 1).all()


def test_epsilon_greedy_explores_each_agent_with_epsilon():
    rng = np.random.default_rng(3)
    explore = exploring_agents(rng, full_avail(), 0.2, "epsilon_greedy")
    assert np.allclose(explore.mean(axis=0), 0.2, atol=0.01)


@pytest.mark.parametrize("mode", ["epsilon_greedy", "decentralized_se", "centralized_se", "policy_sample"])
def test_explored_actions_are_always_available(mode):
    rng = np.random.default_rng(4)
    avail = rng.random((5000, N, A)) < 0.4
    avail[..., 1] = True
    q = rng.normal(size=(5000, N, A))
    actions, explore = select_actions(q, avail, 1.0, mode, rng)
    assert np.take_along_axis(avail, actions[..., None], axis=-1).all()
    assert explore.any()


def test_greedy_takes_the_best_available_action():
    q = np.array([[[5.0, 1.0, 3.0]]])
    avail = np.array([[[False, True, True]]])
    assert greedy_actions(q, avail).tolist() == [[2]]
    actions, explore = select_actions(q, avail, 0.0, "decentralized_se", np.random.default_rng(0))
    assert actions.tolist() == [[2]] and not explore.any()


def test_policy_sampling_draws_each_available_action_with_its_softmax_probability():
    rng = np.random.default_rng(5)
    logits = np.array([0.0, 2.0, 1.0, -1.0, 3.0])
    avail = np.array([True, True, True, True, False])  # the largest logit is unavailable
    draws = sampled_actions(rng, np.broadcast_to(logits, (B, 1, 5)), np.broadcast_to(avail, (B, 1, 5)))
    expected = np.where(avail, np.exp(logits), 0.0)
    expected /= expected.sum()
    assert np.allclose(np.bincount(draws.ravel(), minlength=5) / B, expected, atol=0.01)


def test_policy_sampling_ignores_epsilon_and_marks_the_agents_that_left_the_argmax():
    q = np.broadcast_to(np.array([0.0, 1.0, 0.0]), (B, N, 3))
    avail = np.ones((B, N, 3), dtype=bool)
    shares = []
    for epsilon in (0.0, 1.0):
        actions, explore = select_actions(q, avail, epsilon, "policy_sample", np.random.default_rng(6))
        assert (explore == (actions != 1)).all()
        shares.append(explore.mean())
    # P(leaving action 1) = 2 / (2 + e) whatever epsilon is.
    assert shares[0] == shares[1] == pytest.approx(2 / (2 + np.e), abs=0.01)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown exploration mode 'boltzmann'"):
        exploring_agents(np.random.default_rng(0), full_avail(2), 0.1, "boltzmann")


# --- through the rollout worker: what the acting loop actually plays --------------------------


def always_action_zero_worker(exploration: str, n_agents: int = 4, n_actions: int = 5, seed: int = 0):
    """A rollout worker on scripted battles (every action available) whose network's greedy action
    is action 0 whatever it sees: Q = [1, 0, 0, ...]. Any other action is an explored one."""
    import torch

    from actors.rollout import RolloutWorker
    from common.networks import agent_network
    from tests.fakes.scripted_battles import ScriptedBattles

    env = ScriptedBattles(
        num_envs=50, seed=seed, win_steps=40, loss_steps=40, n_agents=n_agents, n_actions=n_actions
    )
    agent = agent_network(env.get_env_info())
    with torch.no_grad():
        agent.fc2.weight.zero_()
        agent.fc2.bias.zero_()
        agent.fc2.bias[0] = 1.0
    return RolloutWorker(env, agent, exploration=exploration, seed=seed)


def non_greedy_share_per_agent(worker, epsilon: float, episodes: int = 50) -> np.ndarray:
    """Share of each agent's steps on which it did not take the greedy action 0, [n]."""
    played = []
    while len(played) < episodes:
        played += worker.step(epsilon)
    actions = np.concatenate([ep.actions[:-1, :, 0] for ep in played])  # [steps, n]
    return (actions != 0).mean(axis=0)


# An explored agent draws uniformly among A = 5 actions, so it leaves the greedy one 4/5 of the time.
@pytest.mark.parametrize(
    ("mode", "explore_rate"),
    [("decentralized_se", 0.6 / 4), ("centralized_se", 0.6 / 4), ("epsilon_greedy", 0.6), ("greedy", 0.0)],
)
def test_the_rollout_worker_explores_each_agent_as_its_mode_says(mode, explore_rate):
    # 50 episodes of 40 steps: 2,000 steps per agent, a standard error below 0.01 on each share.
    share = non_greedy_share_per_agent(always_action_zero_worker(mode), epsilon=0.6)
    assert np.allclose(share, explore_rate * 4 / 5, atol=0.03), (mode, share)


def test_the_rollout_worker_samples_from_the_policy_in_policy_sample_mode():
    # Logits [1, 0, 0, 0, 0]: the worker leaves action 0 with probability 4 / (4 + e), at any epsilon.
    share = non_greedy_share_per_agent(always_action_zero_worker("policy_sample"), epsilon=0.0)
    assert np.allclose(share, 4 / (4 + np.e), atol=0.03), share


def test_the_rollout_worker_plays_greedily_at_epsilon_zero_and_at_random_at_epsilon_one():
    assert (non_greedy_share_per_agent(always_action_zero_worker("epsilon_greedy"), 0.0) == 0).all()
    share = non_greedy_share_per_agent(always_action_zero_worker("epsilon_greedy"), 1.0)
    assert np.allclose(share, 4 / 5, atol=0.03)
