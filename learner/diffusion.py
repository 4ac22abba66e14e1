"""Conditional diffusion behaviour models over continuous actions (the score models of OMSD).

The forward process is the variance-preserving SDE with beta(t) linear from 0.1 to 20 over t in
[0, 1]: a_t = alpha_t a_0 + sigma_t z, z ~ N(0, I), where

    log alpha_t = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2,   sigma_t = sqrt(1 - alpha_t^2)

(the authors' `marginal_prob_std` in pretrain_behavior.py and algorithms/MASRPO.py). A network
eps(a_t, t | c) predicts the noise z; its score is -eps / sigma_t. It is trained by the denoising
loss E ||eps(a_t, t | c) - z||^2 with t ~ U(1e-3, 1) (`SRPO.py` MASRPO_Behavior.update_behavior).

Agent i's behaviour model is conditioned on `agent_condition`: its observation o_i and, in the
sequential decomposition mu(a | s) = prod_i mu_i(a_i | o_i, a_<i), the actions of the agents before
it in a fixed order; the independent variant conditions on o_i alone. The joint variant (the JAL-style
ablation) is one model mu(a_1..a_n | o_1..o_n) over the flattened joint action, conditioned on
every agent's observation (`JointBehaviourModel`). The reverse-chain sampler is for evaluation and
tests only: the actor update never runs a chain (it calls the network once).

Actions here are in the normalised box [-1, 1]; the learner maps the world's box onto it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

BETA_MIN = 0.1  # VP-SDE schedule (marginal_prob_std's beta_0 and beta_1 in the authors' code)
BETA_MAX = 20.0
TRAIN_T_MIN = 1e-3  # denoising loss draws t ~ U(TRAIN_T_MIN, 1) (MASRPO_Behavior.update_behavior)
FOURIER_SCALE = 30.0  # std of the fixed random time frequencies (their GaussianFourierProjection)

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def log_alpha(t: torch.Tensor, beta_min: float = BETA_MIN, beta_max: float = BETA_MAX) -> torch.Tensor:
    """log alpha_t of the VP-SDE: minus half the integral of beta(s) = beta_min + s (beta_max -
    beta_min) from 0 to t."""
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t), each shaped like t: the mean scale and the std of a_t given a_0."""
    log_a = log_alpha(t)
    # 1 - exp(2 log a) loses precision near t = 0; -expm1 keeps sigma_t accurate for tiny t.
    return torch.exp(log_a), torch.sqrt(-torch.expm1(2.0 * log_a))


def noised(actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """a_t = alpha_t a + sigma_t z for actions [B, A], t [B], noise [B, A]."""
    alpha, sigma = alpha_sigma(t)
    return alpha[:, None] * actions + sigma[:, None] * noise


def agent_condition(obs: torch.Tensor, actions: torch.Tensor, agent: int, sequential: bool) -> torch.Tensor:
    """What agent `agent`'s behaviour model is conditioned on: obs [B, n, O] and actions [B, n, A]
    -> [B, O] (independent) or [B, O + agent * A] (sequential: o_i, then a_0 .. a_{i-1} in order)."""
    own = obs[:, agent]
    if not sequential or agent == 0:
        return own
    return torch.cat([own, actions[:, :agent].flatten(1)], dim=1)


def condition_size(obs_size: int, action_size: int, agent: int, sequential: bool) -> int:
    return obs_size + (agent * action_size if sequential else 0)


def joint_condition(obs: torch.Tensor) -> torch.Tensor:
    """What the joint model is conditioned on: every agent's observation, obs [B, n, O] -> [B, n * O]."""
    return obs.flatten(1)


class FourierTime(nn.Module):
    """Fixed random Fourier features of t: [sin(2 pi w t), cos(2 pi w t)], w ~ N(0, scale^2)."""

    def __init__(self, size: int, scale: float = FOURIER_SCALE):
        super().__init__()
        if size % 2:
            raise ValueError(f"time embedding size must be even, got {size}")
        self.register_buffer("frequencies", torch.randn(size // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t[:, None] * self.frequencies[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ResidualBlock(nn.Module):
    """x + W2 relu(W1 LayerNorm(dropout(x))), hidden width 4x: the block of IDQL's residual MLP,
    which the authors' ScoreNet_IDQL uses."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Dropout(dropout),
            nn.LayerNorm(width),
            nn.Linear(width, 4 * width),
            nn.ReLU(),
            nn.Linear(4 * width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class NoisePredictor(nn.Module):
    """eps(a_t, t | c): time features -> small MLP; concatenated with the noised action and the
    condition; a linear layer, residual blocks, ReLU, a linear head to the action's size."""

    def __init__(
        self,
        action_size: int,
        condition_size: int,
        hidden: int = 256,
        blocks: int = 2,
        time_features: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.time = nn.Sequential(
            FourierTime(time_features),
            nn.Linear(time_features, 2 * time_features),
            nn.ReLU(),
            nn.Linear(2 * time_features, 2 * time_features),
        )
        self.inp = nn.Linear(action_size + condition_size + 2 * time_features, hidden)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden, dropout) for _ in range(blocks)))
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, action_size))

    def forward(self, noised_actions: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = torch.cat([noised_actions, condition, self.time(t)], dim=-1)
        return self.out(self.blocks(self.inp(h)))


def denoising_loss(
    model: Denoiser, actions: torch.Tensor, condition: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of ||eps(a_t, t | c) - z||^2 (summed over action dimensions)."""
    prediction = model(noised(actions, t, noise), t, condition)
    return ((prediction - noise) ** 2).sum(-1).mean()


def draw_training_noise(
    batch: int, action_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U(TRAIN_T_MIN, 1) [B] and z ~ N(0, I) [B, A] for one denoising step."""
    t = torch.rand(batch, generator=generator) * (1.0 - TRAIN_T_MIN) + TRAIN_T_MIN
    z = torch.randn(batch, action_size, generator=generator)
    return t.to(device), z.to(device)


@torch.no_grad()
def sample(
    model: Denoiser,
    condition: torch.Tensor,
    action_size: int,
    steps: int,
    generator: torch.Generator,
    eta: float = 1.0,
) -> torch.Tensor:
    """Actions [B, A] drawn by the reverse chain over `steps` equal steps from t = 1 to t = 0.

    Each step predicts a_0 from a_t (clipped to the box, as Diffusion-QL and IDQL clip) and moves to
    the earlier time with the DDIM update; eta = 1 adds fresh noise as ancestral sampling does, eta
    = 0 is deterministic. For evaluation and tests only."""
    device = condition.device
    batch = condition.shape[0]
    x = torch.randn(batch, action_size, generator=generator).to(device)
    grid = torch.linspace(1.0, 0.0, steps + 1)
    for now, earlier in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        t = torch.full((batch,), now, device=device)
        a_now, s_now = (v.item() for v in alpha_sigma(torch.tensor(now)))
        a_prev, s_prev = (v.item() for v in alpha_sigma(torch.tensor(earlier)))
        eps = model(x, t, condition)
        x0 = ((x - s_now * eps) / a_now).clamp(-1.0, 1.0)
        eps = (x - a_now * x0) / s_now  # the noise that the clipped a_0 implies
        fresh = eta * (s_prev / s_now) * math.sqrt(max(0.0, 1.0 - (a_now / a_prev) ** 2))
        x = a_prev * x0 + math.sqrt(max(0.0, s_prev**2 - fresh**2)) * eps
        if fresh > 0:
            x = x + fresh * torch.randn(batch, action_size, generator=generator).to(device)
    return x


class BehaviourModels(nn.Module):
    """One conditional noise predictor per agent: mu_i(a_i | o_i, a_<i) (sequential) or mu_i(a_i |
    o_i) (independent)."""

    def __init__(
        self,
        n_agents: int,
        obs_size: int,
        action_size: int,
        sequential: bool,
        hidden: int = 256,
        blocks: int = 2,
        time_features: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.sequential = sequential
        self.action_size = action_size
        self.models = nn.ModuleList(
            NoisePredictor(
                action_size,
                condition_size(obs_size, action_size, i, sequential),
                hidden,
                blocks,
                time_features,
                dropout,
            )
            for i in range(n_agents)
        )

    def condition(self, obs: torch.Tensor, actions: torch.Tensor, agent: int) -> torch.Tensor:
        return agent_condition(obs, actions, agent, self.sequential)

    def loss(
        self, obs: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Sum over agents of each model's denoising loss on the data's actions (the prefix of a
        sequential model is the data's own earlier actions). t [B, n], noise [B, n, A]."""
        return sum(
            denoising_loss(model, actions[:, i], self.condition(obs, actions, i), t[:, i], noise[:, i])
            for i, model in enumerate(self.models)
        )

    @torch.no_grad()
    def sample_joint(self, obs: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
        """Joint actions [B, n, A]: agent by agent in order, each conditioned on the actions already
        drawn (sequential: a draw from the chain-rule joint; independent: the product of marginals)."""
        batch, n = obs.shape[0], obs.shape[1]
        actions = torch.zeros(batch, n, self.action_size, device=obs.device)
        for i, model in enumerate(self.models):
            actions[:, i] = sample(model, self.condition(obs, actions, i), self.action_size, steps, generator)
        return actions


class JointBehaviourModel(nn.Module):
    """One noise predictor over the flattened joint action [n * A], conditioned on all agents'
    observations [n * O]: mu(a_1..a_n | o_1..o_n), the joint variant. One t per sample noises every
    agent's action at once."""

    def __init__(
        self,
        n_agents: int,
        obs_size: int,
        action_size: int,
        hidden: int = 256,
        blocks: int = 2,
        time_features: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.n_agents = n_agents
        self.action_size = action_size
        self.model = NoisePredictor(
            n_agents * action_size, n_agents * obs_size, hidden, blocks, time_features, dropout
        )

    def loss(
        self, obs: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The denoising loss on the data's joint action: obs [B, n, O], actions [B, n, A], t [B]
        (one time per sample), noise [B, n * A]."""
        return denoising_loss(self.model, actions.flatten(1), joint_condition(obs), t, noise)

    @torch.no_grad()
    def sample_joint(self, obs: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
        """Joint actions [B, n, A] from one reverse chain over the whole joint action."""
        joint = sample(self.model, joint_condition(obs), self.n_agents * self.action_size, steps, generator)
        return joint.view(obs.shape[0], self.n_agents, self.action_size)
