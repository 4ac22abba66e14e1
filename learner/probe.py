"""The unlearning probe (the paper's Figure 1): mean Q_tot on a fixed set of episodes that the offline
policy played, tracked through online training. A drop right after the switch to online is the
"unlearning" OVM is meant to prevent. Beside it, policy agreement: how often the greedy joint action
on those episodes is still the one the starting policy chose."""

from __future__ import annotations

import torch

from common.episode import TrainingBatch
from learner.learning import QMixLearner
from learner.targets import training_mask


def _agent_qs(learner: QMixLearner, batch: TrainingBatch) -> torch.Tensor:
    """Q [B, T, n, A] of the online agent network on the batch's trained steps."""
    return learner.agent.forward_sequence(learner._agent_inputs(batch))[:, :-1]


@torch.no_grad()
def mean_q_tot(learner: QMixLearner, batch: TrainingBatch) -> float:
    """Mean Q_tot(s_t, a_t) of the online networks over the batch's real steps."""
    batch = batch.to(learner.device)
    q = _agent_qs(learner, batch)
    chosen = torch.gather(q, dim=3, index=batch.actions[:, :-1]).squeeze(3)
    q_tot = learner.mixer(chosen, batch.state[:, :-1])
    mask = training_mask(batch.filled, batch.terminated)
    return float((q_tot * mask).sum() / mask.sum().clamp(min=1))


@torch.no_grad()
def greedy_joint_actions(learner: QMixLearner, batch: TrainingBatch) -> torch.Tensor:
    """The online agent network's greedy action over available actions, [B, T, n], on the batch's
    trained steps (the observations the episodes actually saw)."""
    batch = batch.to(learner.device)
    q = _agent_qs(learner, batch).masked_fill(~batch.avail_actions[:, :-1], float("-inf"))
    return q.argmax(dim=-1).cpu()


def policy_agreement(actions: torch.Tensor, reference: torch.Tensor, batch: TrainingBatch) -> float:
    """Fraction of the batch's real steps where the joint action `actions` [B, T, n] equals
    `reference` for every agent."""
    same = (actions == reference).all(dim=-1).float()  # [B, T]
    mask = training_mask(batch.filled, batch.terminated)[..., 0].cpu()
    return float((same * mask).sum() / mask.sum().clamp(min=1))
