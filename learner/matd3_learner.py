"""MATD3: the online learner that makes the continuous worlds' datasets the way OMAR made its own.

Per-agent deterministic actors on each agent's own observation, one centralised twin critic on the
state and the joint action (the team shares one reward), TD3's three devices: the smaller of two
target critics, noise on the target policy's action, actor updates every `policy_delay` critic
updates. The actors' gradient takes every agent's action from the current policies (the
centralised policy gradient suits a shared reward better than MADDPG's batch actions for the
others). Hyperparameters default to OMAR's MPE settings (its MATD3: gamma 0.95, tau 0.01, lr 0.01,
hidden 64).

Actions live in the world's box [low, high]; inside, actors and critics work in [-1, 1]
(`to_unit`, `from_unit`), so one set of noise scales fits every box.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from common.errors import InputError
from common.transitions import TransitionBatch


@dataclass(frozen=True)
class MATD3Config:
    hidden: int = 64  # OMAR's MPE networks
    lr: float = 0.01  # OMAR's MATD3 on MPE, actors and critic
    gamma: float = 0.95  # OMAR's MPE discount
    tau: float = 0.01  # Polyak rate of the target networks (OMAR)
    policy_noise: float = 0.2  # TD3's target smoothing noise, in unit action space
    noise_clip: float = 0.5  # TD3
    policy_delay: int = 2  # TD3: actor and targets move every 2nd critic update
    exploration_noise: float = 0.1  # Gaussian std of the behaviour's noise, unit space (TD3)
    grad_clip: float = 0.5  # MADDPG/OMAR clip the gradient norm at 0.5
    # 0: online MATD3. > 0: MATD3+BC, offline: TD3+BC's actor loss -lambda Q + |pi - a_data|^2 with
    # lambda = bc_alpha / mean |Q| (TD3+BC's alpha 2.5)
    bc_alpha: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hidden", "policy_delay"):
            if getattr(self, name) < 1:
                raise InputError(f"matd3.{name}: must be at least 1, got {getattr(self, name)}")
        if self.bc_alpha < 0:
            raise InputError(f"matd3.bc_alpha: must be at least 0, got {self.bc_alpha}")
        for name in ("lr", "tau", "grad_clip"):
            if not getattr(self, name) > 0:
                raise InputError(f"matd3.{name}: must be positive, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1:
            raise InputError(f"matd3.gamma: must be in [0, 1], got {self.gamma}")


def to_unit(actions: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Box actions -> [-1, 1]."""
    return (actions - low) / (high - low) * 2.0 - 1.0


def from_unit(actions: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[-1, 1] -> box actions."""
    return low + (actions + 1.0) * 0.5 * (high - low)


def td3_target(
    reward: torch.Tensor, terminal: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + gamma (1 - terminal) min(Q1', Q2'): TD3's clipped double-Q target."""
    return reward + gamma * (~terminal).to(reward.dtype) * torch.minimum(next_q1, next_q2)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class PerAgentActors(nn.Module):
    """n deterministic actors, agent i's on observation i alone: [B, n, O] -> [B, n, A] in [-1, 1]."""

    def __init__(self, n_agents: int, obs_size: int, action_size: int, hidden: int) -> None:
        super().__init__()
        self.actors = nn.ModuleList(_mlp(obs_size, hidden, action_size) for _ in range(n_agents))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tanh(actor(obs[:, i])) for i, actor in enumerate(self.actors)], dim=1)


class TwinCritic(nn.Module):
    """Two Q(s, joint action) heads: [B, S], [B, n, A] -> ([B], [B])."""

    def __init__(self, state_size: int, joint_action_size: int, hidden: int) -> None:
        super().__init__()
        self.q1 = _mlp(state_size + joint_action_size, hidden, 1)
        self.q2 = _mlp(state_size + joint_action_size, hidden, 1)

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([state, actions.flatten(1)], dim=1)
        return self.q1(inputs).squeeze(-1), self.q2(inputs).squeeze(-1)


class MATD3Learner:
    """MATD3 on `TransitionBatch`es from a world whose env info says `action_space: box`."""

    def __init__(self, env_info: dict, cfg: MATD3Config | None = None, seed: int = 0) -> None:
        if env_info.get("action_space") != "box":
            raise InputError(
                f"MATD3 needs a continuous (box) action space; the world's env info says "
                f"action_space={env_info.get('action_space', 'discrete')!r}"
            )
        self.cfg = cfg or MATD3Config()
        self.n_agents = int(env_info["n_agents"])
        self.obs_size = int(env_info["obs_shape"])
        self.state_size = int(env_info["state_shape"])
        self.action_size = int(env_info["action_dim"])
        self.low, self.high = float(env_info["action_low"]), float(env_info["action_high"])
        torch.manual_seed(seed)
        hidden = self.cfg.hidden
        self.actors = PerAgentActors(self.n_agents, self.obs_size, self.action_size, hidden)
        self.critic = TwinCritic(self.state_size, self.n_agents * self.action_size, hidden)
        self.target_actors = copy.deepcopy(self.actors).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimiser = torch.optim.Adam(self.actors.parameters(), lr=self.cfg.lr)
        self.critic_optimiser = torch.optim.Adam(self.critic.parameters(), lr=self.cfg.lr)
        self.noise = torch.Generator().manual_seed(seed + 1)
        self.updates = 0

    # ---- acting
    @torch.no_grad()
    def act(
        self, obs: np.ndarray, exploration_noise: float = 0.0, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Box actions [B, n, A] for observations [B, n, O]; Gaussian noise in unit space when asked."""
        unit = self.actors(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        if exploration_noise > 0:
            if rng is None:
                raise ValueError("exploration noise needs a generator (rng)")
            unit = np.clip(unit + rng.normal(0.0, exploration_noise, unit.shape), -1.0, 1.0)
        return (self.low + (unit + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    # ---- training
    def update(self, batch: TransitionBatch) -> dict[str, float]:
        """One critic step, and every `policy_delay`-th call an actor step and a target move."""
        cfg = self.cfg
        actions = to_unit(batch.actions, self.low, self.high)
        with torch.no_grad():
            smoothing = torch.randn(actions.shape, generator=self.noise) * cfg.policy_noise
            next_actions = (
                self.target_actors(batch.next_obs) + smoothing.clamp(-cfg.noise_clip, cfg.noise_clip)
            ).clamp(-1, 1)
            target = td3_target(
                batch.reward, batch.terminal, *self.target_critic(batch.next_state, next_actions), cfg.gamma
            )
        q1, q2 = self.critic(batch.state, actions)
        critic_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        self.critic_optimiser.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_optimiser.step()
        metrics = {
            "critic_loss": float(critic_loss.detach()),
            "q_mean": float(q1.mean().detach()),
            "target_mean": float(target.mean()),
        }
        self.updates += 1
        if self.updates % cfg.policy_delay == 0:
            policy_actions = self.actors(batch.obs)
            q_policy, _ = self.critic(batch.state, policy_actions)
            actor_loss = -q_policy.mean()
            if cfg.bc_alpha > 0:  # TD3+BC: Q's scale normalised away, the data's actions kept close
                weight = cfg.bc_alpha / q_policy.abs().mean().detach().clamp_min(1e-6)
                actor_loss = weight * actor_loss + ((policy_actions - actions) ** 2).mean()
            self.actor_optimiser.zero_grad(set_to_none=True)
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actors.parameters(), cfg.grad_clip)
            self.actor_optimiser.step()
            self._move_targets()
            metrics["actor_loss"] = float(actor_loss.detach())
        return metrics

    def update_behaviour_cloning(self, batch: TransitionBatch) -> dict[str, float]:
        """Behaviour cloning: one actor step on |pi(o_i) - a_i|^2 alone (no critic)."""
        loss = ((self.actors(batch.obs) - to_unit(batch.actions, self.low, self.high)) ** 2).mean()
        self.actor_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimiser.step()
        self.updates += 1
        return {"bc_loss": float(loss.detach())}

    @torch.no_grad()
    def _move_targets(self) -> None:
        for net, target in ((self.actors, self.target_actors), (self.critic, self.target_critic)):
            for p, tp in zip(net.parameters(), target.parameters(), strict=True):
                tp.lerp_(p, self.cfg.tau)

    # ---- checkpoints (tensors and plain values only: loadable with weights_only=True)
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "shape": self.network_shape(),
            "updates": self.updates,
            "actors": self.actors.state_dict(),
            "critic": self.critic.state_dict(),
            "target_actors": self.target_actors.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optimiser": self.actor_optimiser.state_dict(),
            "critic_optimiser": self.critic_optimiser.state_dict(),
            "noise": self.noise.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("shape") != self.network_shape():
            raise InputError(
                f"MATD3 checkpoint: networks of shape {state.get('shape')}, "
                f"this world needs {self.network_shape()}"
            )
        self.actors.load_state_dict(state["actors"])
        self.critic.load_state_dict(state["critic"])
        self.target_actors.load_state_dict(state["target_actors"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_optimiser.load_state_dict(state["actor_optimiser"])
        self.critic_optimiser.load_state_dict(state["critic_optimiser"])
        self.noise.set_state(state["noise"])
        self.updates = int(state["updates"])

    def network_shape(self) -> dict:
        return {
            "n_agents": self.n_agents,
            "obs_size": self.obs_size,
            "state_size": self.state_size,
            "action_size": self.action_size,
            "hidden": self.cfg.hidden,
        }
