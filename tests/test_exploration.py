"""Sequential exploration explores as many agents as the paper says, and only ever available actions."""

from __future__ import annotations

import numpy as np
import pytest

from actors.exploration import exploring_agents, greedy_actions, select_actions

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


@pytest.mark.parametrize("mode", ["epsilon_greedy", "decentralized_se", "centralized_se"])
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


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown exploration mode 'boltzmann'"):
        exploring_agents(np.random.default_rng(0), full_avail(2), 0.1, "boltzmann")
