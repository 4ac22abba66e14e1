"""Policy agreement on probe episodes: how often the greedy joint action of an agent network, fed the
observations of a fixed set of episodes, is still the one a reference policy chose there. With the
starting policy's own greedy episodes as the probe, it shows how far online training has moved the
policy away from the one it started from (beside the probe's Q values, the paper's Figure 1)."""

from __future__ import annotations

import torch

from common import batch_passes
from common.episode import TrainingBatch, training_mask
from common.networks import RNNAgent


def episode_agent_inputs(
    batch: TrainingBatch, n_actions: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """[obs, previous action one-hot, agent id] of every row, [B, T+1, n, in]: what the agents saw
    while playing the batch's episodes. Built time-major (the recurrent unroll's layout) and returned
    as a batch-major view; in `dtype` when given (the learner's compute dtype: cast once here rather
    than by every network that reads them)."""
    compiled = batch_passes.agent_inputs_compiled(
        batch.obs, batch.actions, n_actions, dtype or batch.obs.dtype
    )
    if compiled is not None:  # on CPU: one pass
        return compiled.transpose(0, 1)
    obs = batch.obs.transpose(0, 1)  # [T+1, B, n, O]
    rows, B, n, O = obs.shape
    # Written in place into one tensor: a training batch has ~10^5 rows, and building the parts and
    # concatenating them cost more than the input layer's product. Equal to `build_agent_inputs`.
    inputs = obs.new_empty(rows, B, n, O + n_actions + n, dtype=dtype or obs.dtype)
    inputs[..., :O] = obs
    inputs[0, ..., O : O + n_actions] = 0.0  # no action before the first row
    previous = batch.actions.transpose(0, 1)[:-1]  # [T, B, n, 1]: the action before rows 1..T
    inputs[1:, ..., O : O + n_actions] = previous == torch.arange(n_actions, device=previous.device)
    inputs[..., O + n_actions :] = torch.eye(n, dtype=inputs.dtype, device=inputs.device)
    return inputs.transpose(0, 1)


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
