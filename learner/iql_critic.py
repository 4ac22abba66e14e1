"""A centralised in-sample critic for continuous joint actions: IQL (Kostrikov et al. 2021), as the
authors of OMSD pre-train it (`SRPO.py` IQL_Critic.update_q0).

    V(s)        <- expectile `tau` of Q_target(s, a) over the data's joint actions a
    Q1, Q2(s,a) <- r + gamma (1 - terminal) V(s')          (both heads, squared error, averaged)
    Q_target    <- Polyak average of (Q1, Q2), read as min(Q1, Q2)

No target ever evaluates an action the data does not hold: V reads Q only at the data's actions.
Q reads [state, the joint action flattened]; V reads the state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.transitions import TransitionBatch


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """`layers` hidden ReLU layers of width `hidden`, then a linear output."""
    sizes = [inputs] + [hidden] * layers
    body: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        body += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*body, nn.Linear(sizes[-1], outputs))


def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of |expectile - 1(difference < 0)| difference^2, difference = target - prediction: with
    expectile > 0.5 a prediction below its target costs more than one above it, so the fit moves
    towards the upper expectile of the targets (0.5 is plain least squares)."""
    weight = torch.where(difference < 0, 1.0 - expectile, expectile)
    return (weight * difference**2).mean()


def td_targets(
    reward: torch.Tensor, terminal: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + gamma (1 - terminal) V(s'), all [B]; no bootstrap past a true terminal."""
    return reward + gamma * (1.0 - terminal.to(reward.dtype)) * next_value


class TwinQ(nn.Module):
    def __init__(self, inputs: int, hidden: int, layers: int):
        super().__init__()
        self.q1 = mlp(inputs, hidden, layers, 1)
        self.q2 = mlp(inputs, hidden, layers, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class IQLCritic(nn.Module):
    """Twin Q(s, a) on the joint action, its Polyak target, and V(s)."""

    def __init__(self, state_size: int, n_agents: int, action_size: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.q = TwinQ(state_size + n_agents * action_size, hidden, layers)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        self.v = mlp(state_size, hidden, layers, 1)

    @staticmethod
    def _joint(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat([state, actions.flatten(1)], dim=-1)

    def q_both(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1, Q2) [B] of the trained heads; actions [B, n, A]."""
        return self.q(self._joint(state, actions))

    def target_both(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1, Q2) [B] of the Polyak target (what V and the actors read)."""
        return self.q_target(self._joint(state, actions))

    def value(self, state: torch.Tensor) -> torch.Tensor:
        return self.v(state).squeeze(-1)

    def losses(self, batch: TransitionBatch, expectile: float, gamma: float) -> dict[str, torch.Tensor]:
        """The value loss, the Q loss (mean of the two heads' squared errors) and diagnostics, all
        from one batch with actions normalised as the critic sees them. Their parameters are
        disjoint, so one backward of their sum updates each as its own loss says."""
        with torch.no_grad():
            q_data = torch.min(*self.target_both(batch.state, batch.actions))
            targets = td_targets(batch.reward, batch.terminal, self.value(batch.next_state), gamma)
        v = self.value(batch.state)
        loss_v = expectile_loss(q_data - v, expectile)
        q1, q2 = self.q_both(batch.state, batch.actions)
        loss_q = 0.5 * (((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean())
        return {"loss_v": loss_v, "loss_q": loss_q, "q_data": q_data.mean(), "v": v.detach().mean()}

    @torch.no_grad()
    def update_target(self, rate: float) -> None:
        """Q_target <- rate Q + (1 - rate) Q_target."""
        for p, p_target in zip(self.q.parameters(), self.q_target.parameters(), strict=True):
            p_target.lerp_(p, rate)
