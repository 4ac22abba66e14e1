"""Policy agreement on probe episodes: how often the greedy joint action of an agent network, fed the
observations of a fixed set of episodes, is still the one a reference policy chose there. With the
starting policy's own greedy episodes as the probe, it shows how far online training has moved the
policy away from the one it started from (beside the probe's Q values, the paper's Figure 1)."""

from __future__ import annotations

import torch

from common.episode import TrainingBatch, training_mask
from common.networks import RNNAgent, episode_agent_inputs


@torch.no_grad()
def greedy_joint_actions(agent: RNNAgent, batch: TrainingBatch) -> torch.Tensor:
    """`agent`'s greedy action among the available ones, [B, T, n], on the batch's trained steps."""
    device = next(agent.parameters()).device
    batch = batch.to(device)
    n_actions = batch.avail_actions.shape[-1]
    q = agent.forward_sequence(episode_agent_inputs(batch, n_actions))[:, :-1]
    q = q.masked_fill(~batch.avail_actions[:, :-1], float("-inf"))
    return q.argmax(dim=-1).cpu()


def policy_agreement(actions: torch.Tensor, reference: torch.Tensor, batch: TrainingBatch) -> float:
    """Fraction of the batch's real steps where the joint action `actions` [B, T, n] equals
    `reference` for every agent."""
    same = (actions == reference).all(dim=-1).float()  # [B, T]
    mask = training_mask(batch.filled, batch.terminated)[..., 0].cpu()
    return float((same * mask).sum() / mask.sum().clamp(min=1))
