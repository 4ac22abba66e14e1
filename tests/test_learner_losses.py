"""The losses: TD, OVM, Monte-Carlo returns, and the CQL family against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from common.networks import QMixer, mix
from learner import losses


def test_td_loss_is_half_the_masked_mean_squared_error():
    q = torch.tensor([[[1.0], [2.0], [5.0]]])
    y = torch.tensor([[[0.0], [4.0], [-100.0]]])
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])
    assert losses.td_loss(q, y, mask).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_ovm_target_is_the_elementwise_max_of_memory_and_td_target():
    q_off = torch.tensor([1.0, 5.0, -2.0, 3.0])
    y_td = torch.tensor([2.0, 4.0, -3.0, 3.0])
    assert losses.ovm_target(q_off, y_td).tolist() == [2.0, 5.0, -2.0, 3.0]


def test_ovm_loss_blends_the_two_targets_by_the_memory_coefficient():
    # Three steps, the last untrained. y_OVM = max(Q_offline, y_TD) = [3, 1, 9] (9: untrained).
    q = torch.tensor([[[1.0], [2.0], [0.0]]])
    y_td = torch.tensor([[[0.0], [1.0], [9.0]]])
    q_off = torch.tensor([[[3.0], [-1.0], [7.0]]])
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])
    l_ovm = 0.5 * ((1 - 3) ** 2 + (2 - 1) ** 2) / 2  # 1.25
    l_td = 0.5 * ((1 - 0) ** 2 + (2 - 1) ** 2) / 2  # 0.5
    assert losses.ovm_loss(q, y_td, q_off, mask, 1.0).item() == pytest.approx(l_ovm)
    assert losses.ovm_loss(q, y_td, q_off, mask, 0.0).item() == pytest.approx(l_td)
    assert losses.ovm_loss(q, y_td, q_off, mask, 0.3).item() == pytest.approx(0.3 * l_ovm + 0.7 * l_td)


def test_monte_carlo_return_to_go_stops_at_the_end_of_each_episode():
    reward = torch.tensor([[[1.0], [2.0], [4.0], [9.0]]])
    mask = torch.tensor([[[1.0], [1.0], [1.0], [0.0]]])
    assert losses.mc_returns(reward, mask, 0.5).squeeze().tolist() == [1 + 1 + 1, 2 + 2, 4, 0]


def test_sampled_joint_actions_are_uniform_over_the_available_ones():
    avail = torch.tensor([[[[True, False, True, True], [False, False, True, False]]]])  # [1, 1, n=2, 4]
    g = torch.Generator().manual_seed(0)
    actions = losses.sample_available_actions(avail.expand(50, 40, 2, 4), 30, g)  # [B, T, K, n]
    assert actions.shape == (50, 40, 30, 2)
    assert set(actions[..., 0].unique().tolist()) == {0, 2, 3}
    assert set(actions[..., 1].unique().tolist()) == {2}
    share = torch.bincount(actions[..., 0].flatten(), minlength=4).float() / actions[..., 0].numel()
    torch.testing.assert_close(share, torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3]), atol=0.01, rtol=0)
    none = losses.sample_available_actions(torch.zeros(1, 1, 2, 4, dtype=torch.bool), 5, g)
    assert (none >= 0).all() and (none < 4).all()


def _setup(B=2, T=3, n=2, A=3, S=4, seed=0):
    torch.manual_seed(seed)
    mixer = QMixer(n, S, embed_dim=4, hypernet_embed=5)
    weights = mixer.mixing_weights(torch.randn(B, T, S))
    agent_qs = torch.randn(B, T, n, A, requires_grad=True)
    avail = torch.rand(B, T, n, A) > 0.3
    avail[..., 0] = True
    actions = torch.zeros(B, T, n, 1, dtype=torch.long)
    chosen = agent_qs.gather(-1, actions).squeeze(-1)
    mask = torch.ones(B, T, 1)
    mask[-1, -1] = 0
    return weights, agent_qs, avail, chosen, mix(chosen, weights), mask


def test_uniform_joint_actions_cover_every_action_available_or_not():
    avail = torch.tensor([[[[True, False, True, True], [False, False, True, False]]]])  # [1, 1, n=2, 4]
    g = torch.Generator().manual_seed(0)
    actions = losses.sample_uniform_actions(avail.expand(50, 40, 2, 4), 30, g)  # [B, T, K, n]
    assert actions.shape == (50, 40, 30, 2) and actions.dtype == torch.int64
    for agent in range(2):  # unavailable actions are drawn as often as available ones
        share = torch.bincount(actions[..., agent].flatten(), minlength=4).float() / actions[..., 0].numel()
        torch.testing.assert_close(share, torch.full((4,), 0.25), atol=0.01, rtol=0)


# A fixed fixture for the CQL formulas: B = 1 episode, T = 2 steps (the second untrained), n = 2
# agents, A = 3 actions; agent 1 cannot take action 2 at step 0.
FIX_AVAIL = torch.tensor(
    [[[[True, True, True], [True, True, False]], [[True, True, True], [True, True, True]]]]
)
FIX_MASK = torch.tensor([[[1.0], [0.0]]])
# Four joint actions per step: (0, 1) and (2, 0) valid, (1, 2) invalid at step 0, (2, 1) valid.
FIX_SAMPLES = torch.tensor([[[[0, 1], [2, 0], [1, 2], [2, 1]], [[0, 0], [1, 1], [2, 2], [0, 2]]]])


def _fixture():
    torch.manual_seed(5)
    mixer = QMixer(2, 4, embed_dim=3, hypernet_embed=5)
    weights = mixer.mixing_weights(torch.randn(1, 2, 4))
    agent_qs = torch.randn(1, 2, 2, 3, requires_grad=True)
    q_data = mix(agent_qs[..., 0], weights)  # the data joint action is (0, 0)
    return weights, agent_qs, q_data


def _q_tot(agent_qs, weights, t, joint):
    """Q_tot at step t of one joint action, straight from the mixer."""
    q = torch.stack([agent_qs[0, t, i, a] for i, a in enumerate(joint)]).view(1, 1, 2)
    step_weights = type(weights)(*(w[:, t : t + 1] for w in weights))
    return mix(q, step_weights).squeeze()


def test_raw_cql_counts_a_joint_sample_with_an_unavailable_action_as_zero():
    weights, agent_qs, q_data = _fixture()
    term = losses.sampled_cql_term(agent_qs, weights, FIX_AVAIL, q_data, FIX_MASK, FIX_SAMPLES)
    # Step 0 only (step 1 is untrained): samples (0, 1), (2, 0), (2, 1) by value, (1, 2) as 0.
    values = [_q_tot(agent_qs, weights, 0, j) for j in [(0, 1), (2, 0), (2, 1)]] + [torch.tensor(0.0)]
    expected = torch.logsumexp(torch.stack(values), 0) - q_data[0, 0, 0]
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    # The invalid sample carries no gradient: agent 0's action 1 is in no other step-0 sample.
    (grad,) = torch.autograd.grad(term, agent_qs)
    assert grad[0, 0, 0, 1] == 0 and grad[0, 1].abs().sum() == 0


def test_calql_floors_the_current_policy_action_and_leaves_uniform_samples_alone():
    weights, agent_qs, q_data = _fixture()
    policy = torch.tensor([[[1, 0], [0, 0]]])  # the greedy joint action per step, [B, T, n]
    sampled = [_q_tot(agent_qs, weights, 0, j) for j in [(0, 1), (2, 0), (2, 1)]]
    q_policy = _q_tot(agent_qs, weights, 0, (1, 0))
    # A floor above every value: it raises the policy's value, and would raise the samples too.
    floor_value = max(v.item() for v in sampled + [q_policy]) + 0.5
    floor = torch.tensor([[[floor_value], [-100.0]]])
    term = losses.sampled_cql_term(
        agent_qs, weights, FIX_AVAIL, q_data, FIX_MASK, FIX_SAMPLES, floor=floor, policy_actions=policy
    )
    floored_policy = torch.clamp(q_policy, min=floor_value)
    expected = (
        torch.logsumexp(torch.stack(sampled + [torch.tensor(0.0), floored_policy]), 0) - q_data[0, 0, 0]
    )
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    everything_floored = torch.logsumexp(
        torch.stack([torch.clamp(v, min=floor_value) for v in sampled] + [torch.tensor(0.0), floored_policy]),
        0,
    )
    assert abs(everything_floored - q_data[0, 0, 0] - expected) > 1e-3  # the fixture tells them apart
    # The floored policy entry (below the floor) has no gradient; the uniform samples keep theirs.
    (grad,) = torch.autograd.grad(
        losses.sampled_cql_term(
            agent_qs, weights, FIX_AVAIL, q_data.detach(), FIX_MASK, FIX_SAMPLES, floor, policy
        ),
        agent_qs,
    )
    assert grad[0, 0, 0, 1] == 0  # agent 0's action 1 appears only in the floored policy action
    assert grad[0, 0, 0, 2] != 0  # agent 0's action 2: the uniform samples (2, 0) and (2, 1)


def test_greedy_actions_are_the_best_available_ones():
    qs = torch.tensor([[[[1.0, 9.0, 2.0], [5.0, 1.0, 7.0]]]])
    avail = torch.tensor([[[[True, False, True], [True, True, True]]]])
    assert losses.greedy_actions(qs, avail).tolist() == [[[2, 2]]]


def test_counterfactual_q_tot_replaces_one_agents_action_at_a_time():
    weights, agent_qs, _, chosen, _, _ = _setup(n=3, A=4)
    cf = losses.counterfactual_q_tot(agent_qs, chosen, weights)
    assert cf.shape == (2, 3, 3, 4)
    for i, j in itertools.product(range(3), range(4)):
        q = chosen.clone()
        q[..., i] = agent_qs[..., i, j]
        torch.testing.assert_close(cf[:, :, i, j], mix(q, weights).squeeze(-1), rtol=1e-5, atol=1e-5)


def test_cfcql_is_the_weighted_logsumexp_over_each_agents_available_actions():
    weights, agent_qs, avail, chosen, q_data, mask = _setup(n=3, A=4)
    term = losses.counterfactual_cql_term(agent_qs, chosen, weights, avail, q_data, mask)
    # Brute force: for each trained step and agent i, Q_tot of the data joint action with agent i's
    # action replaced by each available j, straight from the mixer; tau = 0 weighs agents by 1/n.
    expected = 0.0
    for b, t in itertools.product(range(2), range(3)):
        if mask[b, t, 0] == 0:
            continue
        n_i = []
        for i in range(3):
            values = []
            for j in range(4):
                if avail[b, t, i, j]:
                    q = chosen[b, t].clone()
                    q[i] = agent_qs[b, t, i, j]
                    step = type(weights)(*(w[b : b + 1, t : t + 1] for w in weights))
                    values.append(mix(q.view(1, 1, 3), step).squeeze())
            n_i.append(torch.logsumexp(torch.stack(values), 0))
        expected += torch.stack(n_i).mean() - q_data[b, t, 0]
    assert term.item() == pytest.approx((expected / mask.sum()).item(), rel=1e-5)


def test_calql_on_cfcql_floors_each_agents_current_policy_action_only():
    weights, agent_qs, avail, chosen, q_data, mask = _setup(n=3, A=4)
    policy = torch.tensor([[[1, 0, 2], [0, 0, 0], [3, 1, 0]], [[0, 0, 0], [2, 2, 2], [0, 3, 1]]])
    policy = torch.where(avail.gather(-1, policy.unsqueeze(-1)).squeeze(-1), policy, 0)  # available
    floor = torch.tensor([[[0.2], [-0.1], [0.4]], [[0.0], [0.3], [-0.2]]])
    term = losses.counterfactual_cql_term(
        agent_qs, chosen, weights, avail, q_data, mask, floor=floor, policy_actions=policy
    )
    expected, everything_floored = 0.0, 0.0
    for b, t in itertools.product(range(2), range(3)):
        if mask[b, t, 0] == 0:
            continue
        n_policy, n_all = [], []
        for i in range(3):
            vals, vals_all = [], []
            for j in range(4):
                if not avail[b, t, i, j]:
                    continue
                q = chosen[b, t].clone()
                q[i] = agent_qs[b, t, i, j]
                step = type(weights)(*(w[b : b + 1, t : t + 1] for w in weights))
                cf = mix(q.view(1, 1, 3), step).squeeze()
                vals.append(torch.clamp(cf, min=floor[b, t, 0]) if j == policy[b, t, i] else cf)
                vals_all.append(torch.clamp(cf, min=floor[b, t, 0]))
            n_policy.append(torch.logsumexp(torch.stack(vals), 0))
            n_all.append(torch.logsumexp(torch.stack(vals_all), 0))
        expected += torch.stack(n_policy).mean() - q_data[b, t, 0]  # tau = 0: w = 1/n
        everything_floored += torch.stack(n_all).mean() - q_data[b, t, 0]
    expected, everything_floored = expected / mask.sum(), everything_floored / mask.sum()
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(everything_floored - expected) > 1e-3  # the fixture tells the two readings apart


def test_cfcql_weights_favour_the_agent_whose_implied_policy_strays_from_the_data():
    cf = torch.tensor([[[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]]])  # [1, 1, n=2, 3]: both sure of one action
    behaviour = torch.tensor([[[[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]]])  # data: both take action 0
    avail = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    w = losses.cfcql_agent_weights(cf, behaviour, avail, temperature=5.0)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0, 0, 1] > 0.99  # agent 1 disagrees with the data: nearly all of the weight
    uniform = losses.cfcql_agent_weights(cf, behaviour, avail, temperature=0.0)
    assert uniform.tolist() == [[[0.5, 0.5]]]
    assert losses.cfcql_agent_weights(cf, None, avail, temperature=5.0).tolist() == [[[0.5, 0.5]]]


def test_behaviour_cloning_loss_is_the_nll_of_data_actions_among_available_ones():
    logits = torch.zeros(1, 1, 2, 3)
    avail = torch.tensor([[[[True, True, False], [True, True, True]]]])
    actions = torch.tensor([[[[0], [2]]]])
    loss = losses.behaviour_cloning_loss(logits, actions, avail, torch.ones(1, 1, 1))
    assert loss.item() == pytest.approx(
        (torch.log(torch.tensor(2.0)) + torch.log(torch.tensor(3.0))).item() / 2
    )


def test_monte_carlo_return_to_go_includes_a_trained_last_step():
    reward = torch.tensor([[[1.0], [2.0], [4.0]], [[3.0], [0.0], [0.0]]])
    mask = torch.tensor([[[1.0], [1.0], [1.0]], [[1.0], [0.0], [0.0]]])
    assert losses.mc_returns(reward, mask, 0.5).squeeze(-1).tolist() == [[1 + 1 + 1, 2 + 2, 4], [3, 0, 0]]


def test_behaviour_cloning_loss_averages_agents_per_step_then_trained_steps():
    # Step 0: agents' NLLs log 2 and log 3; step 1 (untrained): a huge NLL that must not count.
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 1, :, 0] = -50.0
    avail = torch.tensor([[[[True, True, False], [True, True, True]], [[True, True, True]] * 2]])
    actions = torch.tensor([[[[0], [2]], [[0], [0]]]])
    mask = torch.tensor([[[1.0], [0.0]]])
    loss = losses.behaviour_cloning_loss(logits, actions, avail, mask)
    assert loss.item() == pytest.approx((math.log(2) + math.log(3)) / 2, rel=1e-6)


def test_uniform_joint_actions_repeat_for_a_seeded_generator():
    avail = torch.ones(3, 4, 2, 5, dtype=torch.bool)
    draws = [losses.sample_uniform_actions(avail, 6, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    seeded = [losses.sample_available_actions(avail, 6, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])


def test_calql_keeps_the_policy_actions_own_value_when_it_is_above_the_floor():
    weights, agent_qs, q_data = _fixture()
    policy = torch.tensor([[[1, 0], [0, 0]]])
    floor = torch.tensor([[[-100.0], [-100.0]]])  # below everything: the floor changes nothing
    term = losses.sampled_cql_term(
        agent_qs, weights, FIX_AVAIL, q_data, FIX_MASK, FIX_SAMPLES, floor=floor, policy_actions=policy
    )
    values = [_q_tot(agent_qs, weights, 0, j) for j in [(0, 1), (2, 0), (2, 1), (1, 0)]]
    expected = torch.logsumexp(torch.stack(values + [torch.tensor(0.0)]), 0) - q_data[0, 0, 0]
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_floor_without_the_policys_actions_is_refused():
    weights, agent_qs, q_data = _fixture()
    floor = torch.zeros(1, 2, 1)
    with pytest.raises(ValueError, match="the Cal-QL floor needs the current policy's actions"):
        losses.sampled_cql_term(agent_qs, weights, FIX_AVAIL, q_data, FIX_MASK, FIX_SAMPLES, floor=floor)
    chosen = agent_qs[..., 0]
    with pytest.raises(ValueError, match="the Cal-QL floor needs the current policy's actions"):
        losses.counterfactual_cql_term(agent_qs, chosen, weights, FIX_AVAIL, q_data, FIX_MASK, floor=floor)
