"""OMSD's actor update as pure functions (offline MARL by sequential score decomposition, arXiv
2505.05968; the authors' `SRPO.py` SRPO_ssd.update_SRPO_policy).

Each agent i has a deterministic policy pi_i(o_i). Its loss, in the authors' code's form, is

    L_i = E[ sigma_t^2 < sg eps_i(a_t, t | o_i, a_<i), pi_i(o_i) > - beta < sg dQ(s, a)/da_i, pi_i(o_i) > ]

with t ~ U(0.02, 0.98), a_t = alpha_t pi_i(o_i) + sigma_t z the noised current action, sg a stop-
gradient, and a the joint action of the current policies. Its gradient in a_i is sigma_t^2 eps_i -
beta dQ/da_i: since eps_i ~ -sigma_t * score, a step moves pi_i up the behaviour model's (noised)
log-density and up Q. The prefix a_<i is the current policies' actions, detached, all computed
before any agent steps (the authors' code does not redraw it after each agent's update).

The weight sigma_t^2 is the code's default (`--WT VDS`); its other choices are kept as options
(`REGULARISER_WEIGHTS`): 1 ("stable") and alpha_t / sigma_t ("score"), and "noise" subtracts the
drawn z from eps (a zero-mean term: less variance, the same expected gradient). sigma_t^2 weights the
large t where the noised behaviour is one blob around its mean, so a deterministic actor settles
between modes; alpha_t / sigma_t weights the small t where each mode is its own peak, so it settles
in one.

Every agent's loss depends only on its own policy's output (the prefix, eps and dQ/da are
constants), so the sum of the agents' losses has exactly each agent's gradient in its own policy:
one backward updates them all as n separate updates would. dQ/da is taken once for the whole
joint action (the authors recompute it per agent at the same point, which gives the same values).

The joint variant (`joint_actor_losses`) has one behaviour model over the joint action: one t and
z per sample noise all agents' current actions together, one denoiser call gives the joint eps,
and agent i's loss is the same form with eps_i, its slice. The actors stay decentralised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.diffusion import Denoiser, agent_condition, alpha_sigma, joint_condition, noised

ACTOR_T_MIN = 0.02  # the actor's t ~ U(0.02, 0.98) (SRPO_ssd.update_SRPO_policy)
ACTOR_T_MAX = 0.98

# (agent, noised action [B, A], t [B], condition [B, C]) -> predicted noise [B, A]
AgentDenoiser = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (state [B, S], joint actions [B, n, A]) -> Q [B]
JointQ = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def draw_actor_noise(
    batch: int, n_agents: int, action_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U(ACTOR_T_MIN, ACTOR_T_MAX) [B, n] and z ~ N(0, I) [B, n, A], one draw per agent."""
    t = torch.rand(batch, n_agents, generator=generator) * (ACTOR_T_MAX - ACTOR_T_MIN) + ACTOR_T_MIN
    z = torch.randn(batch, n_agents, action_size, generator=generator)
    return t.to(device), z.to(device)


def draw_joint_actor_noise(
    batch: int, n_agents: int, action_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U(ACTOR_T_MIN, ACTOR_T_MAX) [B], one per sample, and z ~ N(0, I) [B, n, A]: the joint
    variant noises every agent's action at the same time."""
    t = torch.rand(batch, generator=generator) * (ACTOR_T_MAX - ACTOR_T_MIN) + ACTOR_T_MIN
    z = torch.randn(batch, n_agents, action_size, generator=generator)
    return t.to(device), z.to(device)


def q_action_gradient(
    q: JointQ, state: torch.Tensor, joint_actions: torch.Tensor, normalise: bool = False
) -> torch.Tensor:
    """dQ(s, a)/da [B, n, A] at the joint action a (detached: no gradient reaches the policies).

    `normalise` divides each agent's gradient by its root mean square over the action's dimensions
    (the authors' `regq` option, on for their maze tasks only)."""
    a = joint_actions.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(q(state, a).sum(), a)
    if normalise:
        grad = grad / grad.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-12)
    return grad.detach()


# The code's `--WT` weights w(t) of the regulariser: name -> w(alpha_t, sigma_t).
REGULARISER_WEIGHTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "VDS": lambda alpha, sigma: sigma**2,
    "stable": lambda alpha, sigma: torch.ones_like(sigma),
    "score": lambda alpha, sigma: alpha / sigma,
}


def actor_loss(
    policy_action: torch.Tensor,
    eps: torch.Tensor,
    sigma: torch.Tensor,
    q_grad: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean_B( w <eps, pi> - beta <dQ/da, pi> ) for one agent: policy_action, eps, q_grad [B, A],
    sigma [B]; w is `weight` [B], sigma^2 when None. eps and q_grad are constants here."""
    w = sigma**2 if weight is None else weight
    regulariser = w * (eps.detach() * policy_action).sum(-1)
    guidance = (q_grad.detach() * policy_action).sum(-1)
    return (regulariser - beta * guidance).mean()


def actor_losses(
    policy_actions: torch.Tensor,
    obs: torch.Tensor,
    q_grad: torch.Tensor,
    denoise: AgentDenoiser,
    beta: float,
    t: torch.Tensor,
    noise: torch.Tensor,
    sequential: bool,
    weighting: str = "VDS",
    subtract_noise: bool = False,
) -> list[torch.Tensor]:
    """Every agent's loss L_i. policy_actions [B, n, A]: each agent's own pi_i(o_i), with gradient;
    obs [B, n, O]; q_grad [B, n, A] from `q_action_gradient` at the same joint action; t [B, n] and
    noise [B, n, A] from `draw_actor_noise`; `weighting` a `REGULARISER_WEIGHTS` name and
    `subtract_noise` the code's "noise" (eps - z). `denoise` is called once per agent, never a chain."""
    weight_of = REGULARISER_WEIGHTS[weighting]
    prefix = policy_actions.detach()
    losses = []
    for i in range(policy_actions.shape[1]):
        own = policy_actions[:, i]
        a_t = noised(own.detach(), t[:, i], noise[:, i])
        with torch.no_grad():
            eps = denoise(i, a_t, t[:, i], agent_condition(obs, prefix, i, sequential))
            if subtract_noise:
                eps = eps - noise[:, i]
        alpha, sigma = alpha_sigma(t[:, i])
        losses.append(actor_loss(own, eps, sigma, q_grad[:, i], beta, weight_of(alpha, sigma)))
    return losses


def joint_actor_losses(
    policy_actions: torch.Tensor,
    obs: torch.Tensor,
    q_grad: torch.Tensor,
    denoise: Denoiser,
    beta: float,
    t: torch.Tensor,
    noise: torch.Tensor,
    weighting: str = "VDS",
    subtract_noise: bool = False,
) -> list[torch.Tensor]:
    """Every agent's loss under the joint behaviour model. policy_actions [B, n, A] with gradient,
    obs [B, n, O], q_grad [B, n, A]; t [B] and noise [B, n, A] from `draw_joint_actor_noise`.
    `denoise(noised joint [B, n*A], t [B], every observation [B, n*O])` is called once in all."""
    b, n, a = policy_actions.shape
    a_t = noised(policy_actions.detach().flatten(1), t, noise.flatten(1))
    with torch.no_grad():
        eps = denoise(a_t, t, joint_condition(obs))
        if subtract_noise:
            eps = eps - noise.flatten(1)
    eps = eps.view(b, n, a)
    alpha, sigma = alpha_sigma(t)
    weight = REGULARISER_WEIGHTS[weighting](alpha, sigma)
    return [actor_loss(policy_actions[:, i], eps[:, i], sigma, q_grad[:, i], beta, weight) for i in range(n)]
