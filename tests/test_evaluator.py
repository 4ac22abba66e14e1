"""Evaluation scores a policy as PyMARL2's test runs do: every battle plays one episode per round,
so an episode counts once however long it lasts, and play is greedy whatever the actor explores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.evaluator import eval_result, evaluate
from actors.rollout import RolloutWorker
from common.networks import agent_network as make_agent
from common.networks import build_agent_inputs, previous_actions_onehot
from tests.fakes.scripted_battles import ScriptedBattles


def worker_on(env: ScriptedBattles, exploration: str = "greedy", seed: int = 0) -> RolloutWorker:
    torch.manual_seed(seed)
    return RolloutWorker(env, make_agent(env.get_env_info()), exploration=exploration, seed=seed)


def battle_and_freshness(episodes) -> tuple[list[int], list[bool]]:
    """Which battle each episode came from, and whether it was the first after a `reset()`."""
    return [int(ep.state[0, 0]) for ep in episodes], [bool(ep.state[0, 3]) for ep in episodes]


@pytest.mark.parametrize(
    "win_steps, loss_steps", [(40, 5), (5, 40)], ids=["wins-last-longer", "losses-last-longer"]
)
def test_the_win_rate_is_unbiased_when_episode_length_depends_on_the_outcome(win_steps, loss_steps):
    # Each episode is won with probability 0.5 whatever happened before; only its length differs.
    # Three rounds of 100 battles: keeping the first 300 episodes to end would mostly keep short
    # ones (0.33 and 0.64 on these seeds, far outside the interval).
    env = ScriptedBattles(num_envs=100, seed=3, p_win=0.5, win_steps=win_steps, loss_steps=loss_steps)
    result = evaluate(worker_on(env), 300)
    assert result.episodes == 300
    assert result.win_rate_low <= 0.5 <= result.win_rate_high, result


def test_each_battle_contributes_its_first_episode_once_per_round():
    env = ScriptedBattles(num_envs=8, seed=1, p_win=0.5)
    episodes = worker_on(env).run_episodes(24)
    battles, fresh = battle_and_freshness(episodes)
    assert battles == list(range(8)) * 3  # round by round, in battle order
    assert all(fresh)  # never an episode a battle started after its counted one ended
    # Battles that lost quickly went on to play more episodes meanwhile; none of those counted.
    assert len(env.trajectories) > 24


def test_a_final_partial_round_takes_the_lowest_battles_not_the_first_to_finish():
    # Battles 0 and 1 always win slowly (40 steps); battles 2 and 3 lose fast (5 steps).
    env = ScriptedBattles(num_envs=4, wins=lambda b, j: b < 2, win_steps=40, loss_steps=5)
    episodes = worker_on(env).run_episodes(10)
    battles, fresh = battle_and_freshness(episodes)
    assert battles == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and all(fresh)
    assert [ep.meta.battle_won for ep in episodes[8:]] == [True, True]


def test_evaluation_plays_greedily_even_for_an_exploring_worker():
    env = ScriptedBattles(num_envs=4, seed=2, win_steps=12, loss_steps=7)
    worker = worker_on(env, exploration="epsilon_greedy")

    def played_greedily(trajectory) -> bool:
        # The Q-values the agents acted on at every step, recomputed from what they saw and did.
        actions = trajectory["actions"]
        obs = torch.from_numpy(trajectory["obs"][:-1])[None]  # not the last one: nobody acted on it
        prev = previous_actions_onehot(torch.from_numpy(actions)[None, :, :, None], env.n_actions)
        agent = worker._agents[worker.newest_version]
        with torch.no_grad():
            q = agent.forward_sequence(build_agent_inputs(obs, prev, env.n_agents))[0]
        return np.array_equal(q.argmax(-1).numpy(), actions)

    # The check can tell exploration from greedy play: fully random play fails it.
    worker.run_episodes(4, epsilon=1.0)
    assert not all(played_greedily(t) for t in env.trajectories)

    env.trajectories.clear()
    result = evaluate(worker, 8)
    assert result.policy_version == worker.newest_version == 0
    assert env.trajectories and all(played_greedily(t) for t in env.trajectories)
    assert worker.exploration == "epsilon_greedy"  # the worker explores again afterwards


def test_an_evaluation_result_carries_the_intervals_of_its_episodes():
    env = ScriptedBattles(num_envs=4, wins=lambda b, j: b == 0, win_steps=3, loss_steps=3)
    episodes = worker_on(env).run_episodes(4)
    result = eval_result(episodes, policy_version=7)
    assert (result.episodes, result.win_rate, result.mean_return, result.policy_version) == (4, 0.25, 0.25, 7)
    # Wilson for 1 win in 4; returns [1, 0, 0, 0] have sample sd 0.5, so 1.96 * 0.5 / 2.
    assert (result.win_rate_low, result.win_rate_high) == pytest.approx((0.0456, 0.6994), abs=5e-4)
    assert result.return_ci == pytest.approx(0.49)
    assert list(result.log_fields()) == ["win_rate", "win_rate_low", "win_rate_high", "return", "return_ci"]
