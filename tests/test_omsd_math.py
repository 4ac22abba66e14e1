"""OMSD's pieces, formula by formula: the VP-SDE, the denoising loss and the reverse chain, IQL's
critic, the score-regularised actor loss, and how the learner wires them (which actions each
behaviour model is conditioned on, how often it is called), on tiny hand-made cases."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from common.errors import CheckpointError, InputError
from common.transitions import TransitionBatch
from learner import diffusion, iql_critic, omsd
from learner.omsd_learner import OMSDConfig, OMSDLearner

# --- the VP-SDE ------------------------------------------------------------------------------------


def test_alpha_and_sigma_follow_the_closed_form_of_the_linear_beta_schedule():
    t = torch.tensor([0.0, 0.02, 0.3, 0.5, 0.98, 1.0], dtype=torch.float64)
    alpha, sigma = diffusion.alpha_sigma(t)
    # log alpha_t = -int_0^t beta(s) ds / 2 with beta(s) = 0.1 + 19.9 s
    expected = torch.exp(-(0.1 * t + 19.9 * t**2 / 2) / 2)
    assert torch.allclose(alpha, expected, rtol=1e-12)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    assert alpha[0] == 1.0 and sigma[0] == 0.0
    assert alpha[-1].item() == pytest.approx(math.exp(-5.025), rel=1e-9)


def test_the_log_mean_scale_falls_at_half_the_rate_beta_of_t():
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64, requires_grad=True)
    (rate,) = torch.autograd.grad(diffusion.log_alpha(t).sum(), t)
    assert torch.allclose(rate, -0.5 * (0.1 + 19.9 * t.detach()), rtol=1e-12)


def test_sigma_stays_accurate_near_t_zero():
    t = torch.tensor([1e-6])
    _, sigma = diffusion.alpha_sigma(t)
    # sigma^2 = 1 - alpha^2 ~ 2 * 0.05 t for tiny t
    assert sigma.item() == pytest.approx(math.sqrt(0.1 * 1e-6), rel=1e-3)


def _point_mass_denoiser(point: torch.Tensor):
    """The exact noise predictor for a behaviour that always plays `point`: eps = (a_t - alpha m) / sigma."""

    def eps(noised, t, condition):
        alpha, sigma = diffusion.alpha_sigma(t)
        return (noised - alpha[:, None] * point) / sigma[:, None]

    return eps


def test_the_exact_noise_predictor_of_the_data_has_zero_denoising_loss():
    point = torch.tensor([0.3, -0.6])
    gen = torch.Generator().manual_seed(0)
    t, z = diffusion.draw_training_noise(64, 2, gen, torch.device("cpu"))
    actions = point.expand(64, 2)
    assert diffusion.denoising_loss(_point_mass_denoiser(point), actions, torch.zeros(64, 1), t, z) < 1e-10
    elsewhere = point.expand(64, 2) + 0.5
    assert diffusion.denoising_loss(_point_mass_denoiser(point), elsewhere, torch.zeros(64, 1), t, z) > 0.1


def test_training_times_are_drawn_from_the_codes_range():
    t, _ = diffusion.draw_training_noise(10_000, 1, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.min() >= 1e-3 and t.max() <= 1.0  # the authors' U(1e-3, 1)
    assert t.min() < 0.01 and t.max() > 0.99


def test_one_reverse_step_with_the_exact_score_of_a_point_mass_lands_on_the_point():
    point = torch.tensor([0.3, -0.6])
    draws = diffusion.sample(
        _point_mass_denoiser(point), torch.zeros(8, 1), 2, steps=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(draws, point.expand(8, 2), atol=1e-5)


def test_the_reverse_chain_with_the_exact_score_of_two_points_draws_each_point_half_the_time():
    m = torch.tensor([0.6, 0.6])

    def eps(x, t, condition):  # the exact noise predictor of the even mixture of m and -m (std 0)
        alpha, sigma = diffusion.alpha_sigma(t)
        a, s2 = alpha[:, None], (sigma**2)[:, None]
        logits = torch.stack([-((x - a * m) ** 2).sum(-1), -((x + a * m) ** 2).sum(-1)], -1) / (2 * s2)
        w = torch.softmax(logits, -1)
        mean = a * (w[:, :1] * m - w[:, 1:] * m)
        return (x - mean) / sigma[:, None]

    draws = diffusion.sample(
        eps, torch.zeros(2000, 1), 2, steps=20, generator=torch.Generator().manual_seed(1)
    )
    near_m = (draws - m).norm(dim=-1) < 0.05
    near_minus_m = (draws + m).norm(dim=-1) < 0.05
    assert (near_m | near_minus_m).float().mean() > 0.98  # 20 steps leave a few between the points
    assert near_m.float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_a_sequential_models_condition_is_its_observation_then_the_earlier_agents_actions():
    obs = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    actions = -torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    assert torch.equal(diffusion.agent_condition(obs, actions, 0, sequential=True), obs[:, 0])
    expected = torch.cat([obs[:, 2], actions[:, 0], actions[:, 1]], dim=1)
    assert torch.equal(diffusion.agent_condition(obs, actions, 2, sequential=True), expected)
    assert torch.equal(diffusion.agent_condition(obs, actions, 2, sequential=False), obs[:, 2])


# --- the in-sample critic --------------------------------------------------------------------------


def test_the_expectile_loss_weighs_an_underestimate_tau_to_one_minus_tau_against_an_overestimate():
    d = torch.tensor([0.5])
    assert iql_critic.expectile_loss(d, 0.9).item() == pytest.approx(0.9 * 0.25)
    assert iql_critic.expectile_loss(-d, 0.9).item() == pytest.approx(0.1 * 0.25)
    assert iql_critic.expectile_loss(d, 0.5) == iql_critic.expectile_loss(-d, 0.5)


def test_the_expectile_loss_is_least_at_the_upper_expectile_of_its_targets():
    # Targets 0 and 1 equally often: the tau-expectile v solves tau (1 - v) = (1 - tau) v, v = tau.
    targets = torch.tensor([0.0, 1.0] * 8)

    def slope(v: float, tau: float) -> float:
        at = torch.tensor(v, requires_grad=True)
        (grad,) = torch.autograd.grad(iql_critic.expectile_loss(targets - at, tau), at)
        return grad.item()

    for tau in (0.5, 0.9):
        assert slope(tau, tau) == pytest.approx(0.0, abs=1e-6)
        assert slope(tau - 0.05, tau) < 0 < slope(tau + 0.05, tau)


def test_td_targets_bootstrap_only_where_the_episode_did_not_truly_end():
    reward = torch.tensor([1.0, 2.0])
    terminal = torch.tensor([False, True])
    got = iql_critic.td_targets(reward, terminal, torch.tensor([10.0, 10.0]), gamma=0.9)
    assert torch.allclose(got, torch.tensor([10.0, 2.0]))


def test_the_value_reads_the_targets_smaller_head_at_the_datas_actions_and_the_polyak_step_moves_it():
    critic = iql_critic.IQLCritic(state_size=1, n_agents=1, action_size=1, hidden=4, layers=1)
    batch = TransitionBatch.from_arrays(
        obs=torch.zeros(3, 1, 1),
        state=torch.zeros(3, 1),
        actions=torch.tensor([[[0.1]], [[0.5]], [[-0.3]]]),
        reward=torch.zeros(3),
        next_obs=torch.zeros(3, 1, 1),
        next_state=torch.zeros(3, 1),
        terminal=torch.ones(3, dtype=torch.bool),
    )
    out = critic.losses(batch, expectile=0.5, gamma=0.99)
    q1, q2 = critic.target_both(batch.state, batch.actions)
    assert out["q_data"].item() == pytest.approx(torch.min(q1, q2).mean().item())
    before = [p.clone() for p in critic.q_target.parameters()]  # the target starts as a copy of Q
    with torch.no_grad():
        for p in critic.q.parameters():
            p.add_(1.0)
    critic.update_target(0.25)  # 0.75 target + 0.25 (target + 1)
    for old, new in zip(before, critic.q_target.parameters(), strict=True):
        assert torch.allclose(new, old + 0.25, atol=1e-6)


# --- the actor loss --------------------------------------------------------------------------------


def _actor_gradient(start, denoiser, q_grad, beta, n=4096, seed=0, regulariser=("VDS", False)):
    """The gradient of one agent's loss in its action (every row of the batch at `start`)."""
    pi = start.clone().expand(n, 1, 2).contiguous().requires_grad_(True)
    t, z = omsd.draw_actor_noise(n, 1, 2, torch.Generator().manual_seed(seed), torch.device("cpu"))
    losses = omsd.actor_losses(
        pi, torch.zeros(n, 1, 1), q_grad.expand(n, 1, 2), denoiser, beta, t, z, True, *regulariser
    )
    (grad,) = torch.autograd.grad(losses[0] * n, pi)
    return grad.mean(0)[0]


def test_with_beta_zero_the_actor_loss_pulls_the_action_towards_the_behaviours_mode():
    mode = torch.tensor([0.5, -0.2])
    exact = _point_mass_denoiser(mode)
    start = torch.tensor([-0.3, 0.4])
    grad = _actor_gradient(start, lambda i, a, t, c: exact(a, t, c), torch.zeros(2), beta=0.0)
    # descent direction -grad points from the action to the mode
    cosine = torch.nn.functional.cosine_similarity(-grad, mode - start, dim=0)
    assert cosine > 0.99
    # for a point mass, sigma^2 eps(alpha pi + sigma z) = alpha sigma (pi - m) + sigma^2 z, row by row
    t, z = omsd.draw_actor_noise(4096, 1, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    alpha, sigma = diffusion.alpha_sigma(t[:, 0])
    by_hand = (alpha * sigma)[:, None] * (start - mode) + (sigma**2)[:, None] * z[:, 0]
    assert torch.allclose(grad, by_hand.mean(0), atol=1e-5)


def test_the_codes_other_weightings_scale_each_draw_and_its_noise_option_takes_z_out():
    """--WT score weighs a draw alpha_t / sigma_t, stable 1; "noise" subtracts the drawn z from eps.
    For a point mass eps = (alpha sigma (pi - m) + sigma^2 z) / sigma^2 row by row (the test above)."""
    mode, start = torch.tensor([0.5, -0.2]), torch.tensor([-0.3, 0.4])
    exact = _point_mass_denoiser(mode)
    denoise = lambda i, a, t, c: exact(a, t, c)  # noqa: E731
    t, z = omsd.draw_actor_noise(4096, 1, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    alpha, sigma = diffusion.alpha_sigma(t[:, 0])
    eps = (alpha / sigma)[:, None] * (start - mode) + z[:, 0]
    for name, weight in [("score", alpha / sigma), ("stable", torch.ones_like(sigma))]:
        for subtract in (False, True):
            grad = _actor_gradient(start, denoise, torch.zeros(2), 0.0, regulariser=(name, subtract))
            by_hand = weight[:, None] * (eps - z[:, 0] if subtract else eps)
            assert torch.allclose(grad, by_hand.mean(0), atol=1e-4), (name, subtract)
    with pytest.raises(InputError, match="OMSDConfig.regulariser_weighting"):
        OMSDConfig(regulariser_weighting="noise")


def test_the_q_term_moves_the_action_up_q_scaled_by_beta():
    zero_eps = lambda i, a, t, c: torch.zeros_like(a)  # noqa: E731
    q_grad = torch.tensor([1.0, -2.0])
    grad = _actor_gradient(torch.zeros(2), zero_eps, q_grad, beta=0.3)
    assert torch.allclose(grad, -0.3 * q_grad, atol=1e-6)


@pytest.mark.parametrize("weighting,subtract", [("VDS", False), ("score", True)])
def test_the_joint_regulariser_moves_each_agent_by_its_slice_of_one_joint_eps(weighting, subtract):
    """One t per sample noises the whole joint action; a known denoiser that mixes agents and reads
    the condition, eps(x, t, c) = M x + K c, gives agent i, row by row, the gradient
    w(t) [M (alpha_t pi + sigma_t z) + K o - (z if subtracted)]_i - beta dQ/da_i."""
    b, n, a, o = 64, 3, 2, 4
    g = torch.Generator().manual_seed(0)
    mix, read = torch.randn(n * a, n * a, generator=g), torch.randn(n * a, n * o, generator=g)
    calls = []

    def denoise(x, t, c):
        calls.append(c)
        return x @ mix.T + c @ read.T

    pi = torch.randn(b, n, a, generator=g).requires_grad_(True)
    obs, q_grad = torch.randn(b, n, o, generator=g), torch.randn(b, n, a, generator=g)
    t, z = omsd.draw_joint_actor_noise(b, n, a, g, torch.device("cpu"))
    assert t.shape == (b,) and t.min() >= 0.02 and t.max() <= 0.98
    losses = omsd.joint_actor_losses(pi, obs, q_grad, denoise, 0.3, t, z, weighting, subtract)
    assert len(calls) == 1 and len(losses) == n
    (grad,) = torch.autograd.grad(sum(losses) * b, pi)
    alpha, sigma = diffusion.alpha_sigma(t)
    x = alpha[:, None] * pi.detach().flatten(1) + sigma[:, None] * z.flatten(1)
    eps = x @ mix.T + obs.flatten(1) @ read.T - (z.flatten(1) if subtract else 0)
    w = sigma**2 if weighting == "VDS" else alpha / sigma
    by_hand = (w[:, None] * eps).view(b, n, a) - 0.3 * q_grad
    assert torch.allclose(grad, by_hand, atol=1e-4)


def test_actor_times_lie_in_the_codes_range():
    t, z = omsd.draw_actor_noise(20_000, 2, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.shape == (20_000, 2) and z.shape == (20_000, 2, 3)
    assert t.min() >= 0.02 and t.max() <= 0.98  # the authors' U(0.02, 0.98)
    assert t.min() < 0.021 and t.max() > 0.979


def test_the_q_gradient_is_dq_da_of_the_joint_action_and_optionally_unit_rms_per_agent():
    w = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    q = lambda s, a: (a * w).sum((-1, -2)) + s.sum(-1)  # noqa: E731
    a = torch.zeros(5, 2, 2, requires_grad=True)
    grad = omsd.q_action_gradient(q, torch.ones(5, 3), a)
    assert torch.allclose(grad, w.expand(5, 2, 2)) and not grad.requires_grad
    unit = omsd.q_action_gradient(q, torch.ones(5, 3), a, normalise=True)
    assert torch.allclose(unit.pow(2).mean(-1), torch.ones(5, 2))


# --- the learner's wiring --------------------------------------------------------------------------

TINY = dict(
    batch_size=16,
    policy_hidden=8,
    critic_hidden=8,
    denoiser_hidden=8,
    denoiser_blocks=1,
    denoiser_time_features=4,
    denoiser_dropout=0.0,
    behaviour_steps=1,
    critic_steps=1,
    actor_steps=3,
)


def _batch(b=16, n=3, o=4, s=5, a=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        obs=torch.randn(b, n, o, generator=g),
        state=torch.randn(b, s, generator=g),
        actions=torch.rand(b, n, a, generator=g) * 2 - 1,
        reward=torch.randn(b, generator=g),
        next_obs=torch.randn(b, n, o, generator=g),
        next_state=torch.randn(b, s, generator=g),
        terminal=torch.zeros(b, dtype=torch.bool),
    )


class _Recorder(torch.nn.Module):
    """Wraps a noise predictor and records the condition of every call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.conditions: list[torch.Tensor] = []

    def forward(self, noised, t, condition):
        self.conditions.append(condition.clone())
        return self.model(noised, t, condition)


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_each_agents_model_sees_the_current_policies_earlier_actions_once_per_actor_update(variant):
    learner = OMSDLearner(3, 4, 5, 2, OMSDConfig(variant=variant, **TINY), seed=0)
    recorders = [_Recorder(m) for m in learner.behaviour.models]
    learner.behaviour.models = torch.nn.ModuleList(recorders)
    batch = _batch()
    for _ in range(2):
        with torch.no_grad():
            policy_actions = learner.policies(batch.obs)  # before the update: what the prefix must be
        learner.update_actors(batch)
        for i, recorder in enumerate(recorders):
            condition = recorder.conditions.pop()
            assert recorder.conditions == []  # exactly one call of agent i's model per update
            if variant == "sequential":
                expected = torch.cat([batch.obs[:, i], policy_actions[:, :i].flatten(1)], dim=1)
            else:
                expected = batch.obs[:, i]
            assert torch.allclose(condition, expected)
    # the policies did move (so the second update's prefix was the updated policies' actions)
    assert not torch.allclose(learner.policies(batch.obs), policy_actions)


class _JointRecorder(_Recorder):
    """Also records the noised joint action and the times of every call."""

    def __init__(self, model):
        super().__init__(model)
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, noised, t, condition):
        self.inputs.append((noised.clone(), t.clone()))
        return super().forward(noised, t, condition)


def test_the_joint_model_is_called_once_per_actor_update_on_every_observation_and_one_time_per_sample():
    learner = OMSDLearner(3, 4, 5, 2, OMSDConfig(variant="joint", **TINY), seed=0)
    recorder = _JointRecorder(learner.behaviour.model)
    learner.behaviour.model = recorder
    batch = _batch()
    learner.update_behaviour(batch)  # trained on the data's joint action, one t per sample
    (noised, t), condition = recorder.inputs.pop(), recorder.conditions.pop()
    assert noised.shape == (16, 6) and t.shape == (16,)
    assert torch.equal(condition, batch.obs.flatten(1))
    for _ in range(2):
        learner.update_actors(batch)
        assert len(recorder.conditions) == 1  # one joint call per update, not one per agent
        assert torch.equal(recorder.conditions.pop(), batch.obs.flatten(1))
        noised, t = recorder.inputs.pop()
        assert noised.shape == (16, 6) and t.shape == (16,)


def test_the_joint_model_reads_every_observation_while_each_actor_reads_only_its_own():
    learner = OMSDLearner(3, 4, 5, 2, OMSDConfig(variant="joint", **TINY), seed=0)
    obs = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(0))
    changed = obs.clone()
    changed[:, 1] += 5.0
    noised, t = torch.zeros(6, 6), torch.full((6,), 0.5)
    with torch.no_grad():
        eps = learner.behaviour.model(noised, t, diffusion.joint_condition(obs)).view(6, 3, 2)
        eps_changed = learner.behaviour.model(noised, t, diffusion.joint_condition(changed)).view(6, 3, 2)
    assert not torch.allclose(eps[:, 0], eps_changed[:, 0])  # agent 0's noise sees agent 1's view
    assert torch.equal(learner.act(changed)[:, 0], learner.act(obs)[:, 0])
    assert not torch.equal(learner.act(changed)[:, 1], learner.act(obs)[:, 1])


class _PointMass(torch.nn.Module):
    def __init__(self, point: torch.Tensor):
        super().__init__()
        self.eps = _point_mass_denoiser(point)

    def forward(self, noised, t, condition):
        return self.eps(noised, t, condition)


def test_the_joint_models_draw_is_one_chain_over_the_joint_action_split_back_into_agents():
    model = diffusion.JointBehaviourModel(3, 4, 2, hidden=8, blocks=1, time_features=4)
    point = torch.arange(6, dtype=torch.float32) / 10 - 0.25  # agent i's action: entries 2i, 2i + 1
    model.model = _PointMass(point)
    draws = model.sample_joint(torch.zeros(5, 3, 4), steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(
        draws, point.view(1, 3, 2).expand(5, 3, 2), atol=1e-4
    )  # float32 through 1 / alpha_1


def test_omsd_joint_is_registered_and_round_trips_and_another_variants_checkpoint_is_refused():
    from learner.continuous_registry import CONTINUOUS_METHODS, DatasetShape, PhaseSteps

    method = CONTINUOUS_METHODS["omsd_joint"]
    shape = DatasetShape(3, 4, 5, 2, -1.0, 1.0)
    given = OMSDConfig(**{**TINY, "behaviour_steps": 0, "critic_steps": 0})
    cfg = method.configure(given, PhaseSteps(1, 1, 2, 16))
    assert cfg.variant == "joint" and cfg.denoiser_hidden == 8
    learner = method.build(shape, cfg, 0)
    for _ in range(3):
        learner.update(_batch())
    state = through_a_weights_only_file(learner.state_dict())
    resumed = method.build(shape, cfg, 7)
    resumed.load_state_dict(state)
    assert learner.update(_batch(seed=1)) == resumed.update(_batch(seed=1))
    obs = _batch().obs.numpy()
    policy_buffer = io.BytesIO()
    torch.save(learner.policy_state_dict(), policy_buffer)
    policy_buffer.seek(0)
    weights = torch.load(policy_buffer, weights_only=True)
    act = method.load_policy(method.policy_shape(shape, cfg), weights)
    assert np.array_equal(act(obs), learner.act(obs))
    sequential = CONTINUOUS_METHODS["omsd"].build(
        shape, CONTINUOUS_METHODS["omsd"].configure(given, PhaseSteps(1, 1, 2, 16)), 0
    )
    with pytest.raises(CheckpointError, match="OMSD variant 'joint', expected 'sequential'"):
        sequential.load_state_dict(state)
    with pytest.raises(CheckpointError, match="OMSD variant 'sequential', expected 'joint'"):
        resumed.load_state_dict(sequential.state_dict())


def test_behaviour_training_conditions_on_the_datas_earlier_actions():
    learner = OMSDLearner(3, 4, 5, 2, OMSDConfig(**TINY), seed=0)
    recorders = [_Recorder(m) for m in learner.behaviour.models]
    learner.behaviour.models = torch.nn.ModuleList(recorders)
    batch = _batch()
    learner.update_behaviour(batch)
    assert torch.allclose(
        recorders[2].conditions[0], torch.cat([batch.obs[:, 2], batch.actions[:, :2].flatten(1)], 1)
    )


def test_acting_is_decentralised_and_in_the_worlds_box():
    learner = OMSDLearner(
        2, 3, 4, 2, OMSDConfig(**TINY), seed=0, action_low=[0.0, -2.0], action_high=[1.0, 2.0]
    )
    obs = torch.randn(6, 2, 3)
    actions = learner.act(obs)
    assert bool(((actions[..., 0] >= 0) & (actions[..., 0] <= 1) & (actions[..., 1].abs() <= 2)).all())
    changed = obs.clone()
    changed[:, 1] += 5.0  # agent 1's observation changes; agent 0's action must not
    assert torch.equal(learner.act(changed)[:, 0], actions[:, 0])
    assert not torch.equal(learner.act(changed)[:, 1], actions[:, 1])


def test_the_phases_run_in_order_and_stop():
    learner = OMSDLearner(3, 4, 5, 2, OMSDConfig(**TINY), seed=0)
    seen = []
    while learner.phase != "done":
        seen.append(learner.phase)
        assert learner.update(_batch())
    assert seen == ["behaviour", "critic", "actors", "actors", "actors"]
    assert learner.update(_batch()) == {}


def through_a_weights_only_file(state: dict) -> dict:
    """`state` saved and read back the way checkpoints are: torch.load with weights_only."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_checkpoint_holds_only_tensors_and_plain_values_and_resumes_exactly():
    cfg = OMSDConfig(**TINY)
    learner = OMSDLearner(3, 4, 5, 2, cfg, seed=0)
    for _ in range(3):
        learner.update(_batch())
    state = through_a_weights_only_file(learner.state_dict())
    resumed = OMSDLearner(3, 4, 5, 2, cfg, seed=7)
    resumed.load_state_dict(state)
    after_a, after_b = learner.update(_batch(seed=1)), resumed.update(_batch(seed=1))
    assert after_a == after_b
    assert torch.equal(learner.act(_batch().obs), resumed.act(_batch().obs))
    other = OMSDLearner(3, 4, 5, 3, cfg, seed=0)
    with pytest.raises(CheckpointError, match="network shape"):
        other.load_state_dict(state)


def test_bad_settings_and_bad_batches_are_one_line_errors_naming_the_field():
    with pytest.raises(InputError, match="OMSDConfig.variant"):
        OMSDConfig(variant="jal")
    with pytest.raises(InputError, match="OMSDConfig.expectile"):
        OMSDConfig(expectile=1.0)
    good = _batch()
    fields = {name: getattr(good, name) for name in good.__dataclass_fields__}
    for name, bad in [
        ("actions", good.actions[:, :, 0]),
        ("reward", good.reward[:3]),
        ("next_obs", good.next_obs[:, :2]),
        ("terminal", good.terminal[:, None]),
        ("state", good.state[None]),
    ]:
        with pytest.raises(InputError, match=f"TransitionBatch.{name}:") as caught:
            TransitionBatch(**{**fields, name: bad})
        assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="TransitionBatch.reward: holds NaN"):
        TransitionBatch(**{**fields, "reward": torch.full_like(good.reward, float("nan"))})
    learner = OMSDLearner(3, 4, 6, 2, OMSDConfig(**TINY), seed=0)
    with pytest.raises(InputError, match="state_size"):
        learner.update_actors(good)


def test_the_field_list_names_the_batch_fields_in_order():
    from dataclasses import fields

    from common.transitions import TRANSITION_FIELDS

    assert TRANSITION_FIELDS == tuple(f.name for f in fields(TransitionBatch))
