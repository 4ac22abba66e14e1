"""The rollout worker plays with the agent network, records whole episodes, and switches weights
only at episode boundaries."""

from __future__ import annotations

import numpy as np
import torch

from actors.rollout import RolloutWorker
from common.envs.lite import LiteBatchEnv
from common.networks import agent_network as make_agent
from common.networks import build_agent_inputs, previous_actions_onehot


def worker(num_envs=4, exploration="decentralized_se", seed=0):
    env = LiteBatchEnv("3m", num_envs=num_envs, seed=seed)
    torch.manual_seed(seed)
    return RolloutWorker(env, make_agent(env.get_env_info()), exploration=exploration, seed=seed, actor_id=3)


def test_episodes_are_complete_and_tagged_with_actor_and_version():
    w = worker()
    episodes = w.run_episodes(8, epsilon=1.0)
    assert len(episodes) == 8
    for ep in episodes:
        assert ep.meta.actor_id == 3 and ep.meta.policy_version == 0 and ep.meta.source == "online"
        taken = np.take_along_axis(ep.avail_actions[:-1], ep.actions[:-1], axis=2)
        assert taken.all()
    assert w.env_steps > 0 and w.episodes >= 8


def test_greedy_play_is_deterministic_for_fixed_weights():
    a = [ep.reward.sum() for ep in worker(seed=1).run_episodes(6)]
    b = [ep.reward.sum() for ep in worker(seed=1).run_episodes(6)]
    assert a == b


def test_new_weights_apply_from_each_battles_next_episode_and_versions_only_go_forward():
    w = worker(num_envs=4)
    w.reset()
    for _ in range(3):
        w.step(0.0)
    new = make_agent(w.env.get_env_info()).state_dict()
    assert w.set_weights(new, version=5)
    assert not w.set_weights(new, version=4)  # stale: ignored
    assert (w.battle_version == 0).all()  # battles mid-episode keep their version
    episodes = []
    while len(episodes) < 12:
        episodes += w.step(0.0)
    versions = [ep.meta.policy_version for ep in episodes]
    first_new = versions.index(5)
    assert set(versions[:first_new]) <= {0} and set(versions[first_new:]) == {5}
    assert set(w._agents) == {5}  # old weights are dropped once no battle uses them


def test_the_fused_training_pass_reproduces_the_acting_q_values():
    """The learner's one-call sequence pass over a recorded episode sees the Q-values the actor
    acted on: greedy play picked their argmax at every step."""
    w = worker(num_envs=1)
    first_q = worker(num_envs=1)
    first_q.reset()
    q0 = first_q.q_values(first_q._obs.obs)[0]
    ep = w.run_episodes(1)[0]
    obs = torch.from_numpy(ep.obs)[None]
    prev = previous_actions_onehot(torch.from_numpy(ep.actions)[None], w.n_actions)
    with torch.no_grad():
        q_seq = w._agents[0].forward_sequence(build_agent_inputs(obs, prev, w.n_agents))[0].numpy()
    greedy = np.where(ep.avail_actions[:-1].astype(bool), q_seq[:-1], -np.inf).argmax(-1)
    assert np.array_equal(greedy, ep.actions[:-1, :, 0])
    assert np.allclose(q_seq[0], q0, atol=1e-5)


def test_the_numpy_acting_step_equals_the_torch_network():
    from actors.numpy_agent import NumpyAgent

    torch.manual_seed(4)
    agent = make_agent({"n_agents": 3, "obs_shape": 30, "n_actions": 9})
    inputs = torch.randn(5, 12, agent.input_size)
    hidden_t, hidden_n = agent.init_hidden(12), np.zeros((12, agent.hidden_size), dtype=np.float32)
    fast = NumpyAgent(agent)
    with torch.no_grad():
        for t in range(5):
            q_t, hidden_t = agent.forward_step(inputs[t], hidden_t)
            q_n, hidden_n = fast.step(inputs[t].numpy(), hidden_n)
            assert np.allclose(q_n, q_t.numpy(), atol=1e-5)
            assert np.allclose(hidden_n, hidden_t.numpy(), atol=1e-5)
