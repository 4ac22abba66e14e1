"""The unlearning probe (the paper's Figure 1): mean Q_tot on a fixed set of episodes that the offline
policy played, tracked through online training. A drop right after the switch to online is the
"unlearning" OVM is meant to prevent. Beside it, policy agreement (common/probe.py): how often the
greedy joint action on those episodes is still the one the starting policy chose."""

from __future__ import annotations

import torch

from common.episode import TrainingBatch, training_mask
from common.networks import episode_agent_inputs
from common.probe import greedy_joint_actions as agent_greedy_joint_actions
from learner.inspo_learner import InSPOLearner
from learner.qmix_learner import QMixLearner


def _agent_qs(learner: QMixLearner, batch: TrainingBatch) -> torch.Tensor:
    """Q [B, T, n, A] of the online agent network on the batch's trained steps."""
    return learner.agent.forward_sequence(episode_agent_inputs(batch, learner.n_actions))[:, :-1]


@torch.no_grad()
def mean_q_tot(learner: QMixLearner | InSPOLearner, batch: TrainingBatch) -> float:
    """Mean Q_tot(s_t, a_t) of the online networks over the batch's real steps (InSPO: its joint
    critic's Q(s_t, a_t))."""
    if isinstance(learner, InSPOLearner):
        return learner.mean_q_value(batch)
    batch = batch.to(learner.device)
    q = _agent_qs(learner, batch)
    chosen = torch.gather(q, dim=3, index=batch.actions[:, :-1]).squeeze(3)
    q_tot = learner.mixer(chosen, batch.state[:, :-1])
    mask = training_mask(batch.filled, batch.terminated)
    return float((q_tot * mask).sum() / mask.sum().clamp(min=1))


def greedy_joint_actions(learner: QMixLearner | InSPOLearner, batch: TrainingBatch) -> torch.Tensor:
    """The online agent network's (InSPO: the policies') greedy joint actions [B, T, n] on the
    batch's trained steps."""
    network = learner.policies if isinstance(learner, InSPOLearner) else learner.agent
    return agent_greedy_joint_actions(network, batch)
