"""The unlearning probe (the paper's Figure 1): mean Q_tot on a fixed set of episodes that the offline
policy played, tracked through online training. A drop right after the switch to online is the
"unlearning" OVM is meant to prevent."""

from __future__ import annotations

import torch

from common.episode import TrainingBatch
from learner.learning import QMixLearner
from learner.targets import training_mask


@torch.no_grad()
def mean_q_tot(learner: QMixLearner, batch: TrainingBatch) -> float:
    """Mean Q_tot(s_t, a_t) of the online networks over the batch's real steps."""
    batch = batch.to(learner.device)
    inputs = learner._agent_inputs(batch)
    q = learner.agent.forward_sequence(inputs)[:, :-1]
    chosen = torch.gather(q, dim=3, index=batch.actions[:, :-1]).squeeze(3)
    q_tot = learner.mixer(chosen, batch.state[:, :-1])
    mask = training_mask(batch.filled, batch.terminated)
    return float((q_tot * mask).sum() / mask.sum().clamp(min=1))
