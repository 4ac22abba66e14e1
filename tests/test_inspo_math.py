"""InSPO's per-agent update, formula by formula, against numbers worked out by hand on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from learner import inspo


def test_closed_form_policy_is_mu_to_the_alpha_share_times_exp_q_over_the_temperature():
    # mu = (0.5, 0.3, 0.2), q = (1, 2, 0), alpha = 1, beta = 1: pi* ~ mu^(1/2) exp(q/2).
    mu = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([1.0, 2.0, 0.0])
    avail = torch.tensor([True, True, True])
    unnormalised = [math.sqrt(0.5) * math.exp(0.5), math.sqrt(0.3) * math.exp(1.0), math.sqrt(0.2) * 1.0]
    expected = torch.tensor([u / sum(unnormalised) for u in unnormalised])
    got = inspo.closed_form_log_policy(mu.log(), q, avail, 1.0, 1.0).exp()
    assert torch.allclose(got, expected, atol=1e-6)


def test_closed_form_policy_gives_unavailable_actions_no_mass():
    mu = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.0, 5.0, 1.0])
    avail = torch.tensor([True, False, True])
    # alpha = 0.5, beta = 0 (no entropy bonus): pi* ~ mu exp(2 q) over actions 0 and 2 only.
    a0, a2 = 0.5 * 1.0, 0.25 * math.exp(2.0)
    got = inspo.closed_form_log_policy(mu.log(), q, avail, 0.5, 0.0).exp()
    assert got[1] < 1e-12
    assert torch.allclose(got[[0, 2]], torch.tensor([a0 / (a0 + a2), a2 / (a0 + a2)]), atol=1e-6)


def test_weights_are_pi_star_over_mu_when_v_is_the_soft_value():
    mu = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    q = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    avail = torch.ones(2, 2, dtype=torch.bool)
    alpha, beta = 0.3, 0.2
    value = inspo.soft_value(mu.log(), q, avail, alpha, beta)
    # V = (alpha + beta) log sum mu^(alpha / (alpha + beta)) exp(q / (alpha + beta)), by hand:
    for row in range(2):
        z = sum(mu[row, a].item() ** 0.6 * math.exp(q[row, a].item() / 0.5) for a in range(2))
        assert value[row, 0].item() == pytest.approx(0.5 * math.log(z), rel=1e-6)
    log_w = inspo.log_policy_weights(q, value, mu.log(), alpha, beta)
    # (q - V) / 0.5 - (0.2 / 0.5) log mu, and it equals log pi* - log mu.
    by_hand = (q - value) / 0.5 - 0.4 * mu.log()
    pi_star = inspo.closed_form_log_policy(mu.log(), q, avail, alpha, beta).exp()
    assert torch.allclose(log_w, by_hand, atol=1e-6)
    assert torch.allclose(log_w.exp(), pi_star / mu, atol=1e-6)


def test_weighted_bc_loss_is_the_clipped_weighted_negative_log_likelihood():
    # Two steps, two actions. Step 0: logits (0, ln 3) -> pi = (1/4, 3/4), action 1, log-weight ln 2.
    # Step 1: logits (0, 0) -> pi = (1/2, 1/2), action 0, log-weight 10 clipped to ln 5. Step 2 masked.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [7.0, 0.0]], requires_grad=True)
    actions = torch.tensor([[1], [0], [1]])
    avail = torch.ones(3, 2, dtype=torch.bool)
    log_w = torch.tensor([[math.log(2.0)], [10.0], [0.0]])
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    loss = inspo.weighted_bc_loss(logits, actions, avail, log_w, mask, max_log_weight=math.log(5.0))
    expected = -(2.0 * math.log(0.75) + 5.0 * math.log(0.5)) / 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[2].abs().sum() == 0  # the masked step teaches nothing


def test_each_agents_teammate_ratio_multiplies_the_other_agents_ratios_and_is_clipped():
    # Three agents, two actions; dataset actions (0, 1, 0). Per-agent ratios pi/mu: 1.0, 1.6, 3.0.
    pi = torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    mu = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.3, 0.7]])
    actions = torch.tensor([[0], [1], [0]])
    log_ratio = inspo.teammate_log_ratios(pi.log(), mu.log(), actions)
    expected = [1.6 * 3.0, 1.0 * 3.0, 1.0 * 1.6]  # agent i's teammates exclude i
    assert log_ratio.exp().tolist() == pytest.approx(expected, rel=1e-6)
    assert inspo.clipped_ratio(log_ratio, clip=3.0).tolist() == pytest.approx([3.0, 3.0, 1.6], rel=1e-6)
    assert inspo.clipped_ratio(log_ratio, clip=10.0).tolist() == pytest.approx(expected, rel=1e-6)


def test_weighted_regression_fits_the_weighted_mean_of_the_targets():
    # One prediction p against targets (1, 3) with weights (3, 1): loss = (3 (p-1)^2 + (p-3)^2) / 4,
    # minimised at p = (3 * 1 + 1 * 3) / 4 = 1.5.
    target = torch.tensor([[1.0], [3.0]])
    weights = torch.tensor([[3.0], [1.0]])
    mask = torch.ones(2, 1)
    p = torch.tensor([[2.0], [2.0]])
    loss = inspo.weighted_regression_loss(p, target, weights, mask)
    assert loss.item() == pytest.approx((3 * 1.0 + 1.0) / 4, rel=1e-6)
    best = torch.tensor([[1.5], [1.5]])
    assert inspo.weighted_regression_loss(best, target, weights, mask) < loss


def test_expectile_loss_weights_positive_and_negative_errors_asymmetrically():
    # differences (target - prediction): +2, -1, +1 (masked out); expectile 0.8:
    # (0.8 * 4 + 0.2 * 1) / 2.
    difference = torch.tensor([[2.0], [-1.0], [1.0]])
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    assert inspo.expectile_loss(difference, 0.8, mask).item() == pytest.approx((3.2 + 0.2) / 2, rel=1e-6)
    # expectile 0.5 is half the squared error
    assert inspo.expectile_loss(difference, 0.5, mask).item() == pytest.approx(0.5 * 5 / 2, rel=1e-6)


def test_anchored_weights_are_the_closed_form_toward_the_anchor_over_the_behaviour_by_hand():
    from learner.inspo import anchored_log_weights, log_policy_weights, soft_value

    anchor = torch.tensor([[0.5, 0.5]]).log()
    mu = torch.tensor([[0.9, 0.1]]).log()
    q = torch.tensor([[0.0, 1.0]])
    avail = torch.ones(1, 2, dtype=torch.bool)
    value = soft_value(anchor, q, avail, alpha=1.0, beta=0.0)
    log_w = anchored_log_weights(q[:, 1:], value, anchor[:, 1:], mu[:, 1:], alpha=1.0, beta=0.0)
    # pi* ~ 0.5 * e^q = (1, e) / (1 + e); the action was drawn with probability 0.1
    assert log_w.item() == pytest.approx(math.log(math.e / (1 + math.e) / 0.1))
    v_mu = soft_value(mu, q, avail, 1.0, 0.5)
    same = anchored_log_weights(q[:, :1], v_mu, mu[:, :1], mu[:, :1], 1.0, 0.5)  # anchor = mu: offline
    assert torch.allclose(same, log_policy_weights(q[:, :1], v_mu, mu[:, :1], 1.0, 0.5))
