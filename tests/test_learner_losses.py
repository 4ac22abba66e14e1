"""The losses: TD, OVM, Monte-Carlo returns, and the CQL family against brute-force definitions."""

from __future__ import annotations

import itertools

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
    torch.manual_seed(0)
    q, y, q_off = torch.randn(3, 4, 1), torch.randn(3, 4, 1), torch.randn(3, 4, 1)
    mask = (torch.rand(3, 4, 1) > 0.3).float()
    l_ovm = losses.td_loss(q, torch.maximum(q_off, y), mask)
    l_td = losses.td_loss(q, y, mask)
    assert losses.ovm_loss(q, y, q_off, mask, 1.0).item() == pytest.approx(l_ovm.item())
    assert losses.ovm_loss(q, y, q_off, mask, 0.0).item() == pytest.approx(l_td.item())
    assert losses.ovm_loss(q, y, q_off, mask, 0.3).item() == pytest.approx(
        0.3 * l_ovm.item() + 0.7 * l_td.item()
    )


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


def test_raw_cql_is_logsumexp_over_sampled_joint_actions_minus_the_data_value():
    weights, agent_qs, avail, _, q_data, mask = _setup()
    K = 6
    term = losses.sampled_cql_term(
        agent_qs, weights, avail, q_data, mask, K, torch.Generator().manual_seed(3)
    )
    sampled = losses.sample_available_actions(avail, K, torch.Generator().manual_seed(3))  # the same draws
    values = []
    for k in range(K):
        q_k = agent_qs.gather(-1, sampled[:, :, k].unsqueeze(-1)).squeeze(-1)
        values.append(mix(q_k, weights))
    expected = (torch.logsumexp(torch.cat(values, -1), -1, keepdim=True) - q_data) * mask
    assert term.item() == pytest.approx((expected.sum() / mask.sum()).item(), rel=1e-5)


def test_calql_floors_only_the_push_down_term():
    weights, agent_qs, avail, _, q_data, mask = _setup()
    K = 5
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    raw = losses.sampled_cql_term(agent_qs, weights, avail, q_data, mask, K, g())
    low = losses.sampled_cql_term(
        agent_qs, weights, avail, q_data, mask, K, g(), floor=torch.full((2, 3, 1), -1e6)
    )
    assert low.item() == pytest.approx(raw.item())  # a floor below every value changes nothing
    floor = torch.full((2, 3, 1), 1e3)  # above every value: the push-down term is the constant floor
    high = losses.sampled_cql_term(agent_qs, weights, avail, q_data.detach(), mask, K, g(), floor=floor)
    expected = ((1e3 + torch.log(torch.tensor(float(K))) - q_data.detach()) * mask).sum() / mask.sum()
    assert high.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(high, agent_qs)
    assert torch.count_nonzero(grad) == 0  # nothing pushes sampled actions down any more
    # ... while the data term still pulls the data actions up, exactly as without the floor.
    q_data_leaf = q_data.detach().requires_grad_()
    (data_grad,) = torch.autograd.grad(
        losses.sampled_cql_term(agent_qs.detach(), weights, avail, q_data_leaf, mask, K, g(), floor=floor),
        q_data_leaf,
    )
    torch.testing.assert_close(data_grad, -mask / mask.sum())
    chosen = agent_qs[..., 0]  # the data actions are action 0
    cf_raw = losses.counterfactual_cql_term(agent_qs, chosen, weights, avail, q_data, mask)
    cf_high = losses.counterfactual_cql_term(
        agent_qs, chosen, weights, avail, q_data.detach(), mask, floor=floor
    )
    assert cf_high.item() != pytest.approx(cf_raw.item())
    (cf_grad,) = torch.autograd.grad(cf_high, agent_qs)
    assert torch.count_nonzero(cf_grad) == 0


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
    cf = losses.counterfactual_q_tot(agent_qs, chosen, weights).masked_fill(~avail, float("-inf"))
    expected = (torch.logsumexp(cf, -1).mean(-1, keepdim=True) - q_data) * mask  # tau = 0: w = 1/n
    assert term.item() == pytest.approx((expected.sum() / mask.sum()).item(), rel=1e-5)


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
