"""One recurrent network per agent, used where a method needs agents with separate parameters (InSPO's
per-agent policies and local critics), with the interface of one shared `RNNAgent`: training calls
`forward_sequence` on [B, T, n, in] inputs, acting calls `forward_step` on rows ordered battle-major,
agent-minor, as the rollout worker lays them out. Each agent's network keeps the agent-id input of
the shared network, so the input builder is the same for both.
"""

from __future__ import annotations

import torch
from torch import nn

from common.networks import RNNAgent, agent_network


class AgentStack(nn.Module):
    """One recurrent network per agent, called like one `RNNAgent` on [B, T, n, in] inputs."""

    def __init__(self, agents: list[RNNAgent]):
        super().__init__()
        self.agents = nn.ModuleList(agents)
        first = agents[0]
        self.input_size, self.n_actions, self.hidden_size = (
            first.input_size,
            first.n_actions,
            first.hidden_size,
        )

    def forward_agent(
        self, m: int, inputs: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Agent m's outputs [B, T, A] from the batch's inputs [B, T, n, in]."""
        return self.agents[m].forward_sequence(inputs[:, :, m : m + 1], lengths=lengths)[:, :, 0]

    def forward_sequence(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([self.forward_agent(m, inputs, lengths) for m in range(len(self.agents))], dim=2)

    def forward_step(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One acting step on rows ordered battle-major, agent-minor: inputs [B*n, in], hidden [B*n, H]."""
        n = len(self.agents)
        rows = inputs.view(-1, n, inputs.shape[-1])
        hid = hidden.view(-1, n, hidden.shape[-1])
        outs = [self.agents[m].forward_step(rows[:, m], hid[:, m]) for m in range(n)]
        q = torch.stack([o[0] for o in outs], dim=1).reshape(-1, self.n_actions)
        h = torch.stack([o[1] for o in outs], dim=1).reshape(-1, self.hidden_size)
        return q, h

    def init_hidden(self, rows: int, device=None) -> torch.Tensor:
        return self.agents[0].init_hidden(rows, device)


def policy_stack(env_info: dict, hidden_size: int = 64) -> AgentStack:
    """A fresh stack of `n_agents` agent networks for a world with `env_info`."""
    return AgentStack([agent_network(env_info, hidden_size) for _ in range(int(env_info["n_agents"]))])
