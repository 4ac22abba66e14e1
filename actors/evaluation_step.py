"""One evaluation step, shared by the evaluator process (actors/eval_process.py) and the one-process
trainer (deploy/single_process.py): score a weight version on greedy test battles, keep the probe
episodes of the starting policy, and write the "eval" row.

The first version scored is the starting policy (the offline pre-trained one): its greedy episodes
are both its test score and the probe (at least PROBE_EPISODES). Every later row carries the policy
agreement on the probe: how often the greedy joint action there is still the one the starting
policy chose (the paper's Figure 1 beside the probe's Q values, which only a learner can give: a
caller that has one passes `probe_values`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from actors.evaluator import PROBE_EPISODES, EvalResult, eval_result, evaluate, play_greedy
from actors.rollout import RolloutWorker
from common.episode import TrainingBatch, to_training_batch
from common.probe import greedy_joint_actions, policy_agreement
from common.run_log import RunLog


@dataclass(frozen=True)
class Probe:
    """The starting policy's greedy episodes and the joint actions it chose there."""

    batch: TrainingBatch
    start_actions: torch.Tensor  # [B, T, n]


class EvaluationStep:
    """Scores weight versions on `worker` (greedy battles) and logs each as an "eval" row.

    probe_values(batch) -> extra columns computed on the probe episodes (the trainer's learner adds
    its Q estimate there); every row carries the same columns, in the same order."""

    def __init__(
        self,
        worker: RolloutWorker,
        runlog: RunLog,
        test_episodes: int,
        probe_values: Callable[[TrainingBatch], dict] | None = None,
    ):
        self.worker = worker
        self.runlog = runlog
        self.test_episodes = test_episodes
        self.probe_values = probe_values
        self.probe: Probe | None = None

    def keep_probe(self, weights: dict[str, torch.Tensor], version: int) -> list:
        """Play the starting weights greedily; their first PROBE_EPISODES episodes become the probe.
        Returns every episode played (at least `test_episodes`: they are also its test score)."""
        self.worker.set_weights(weights, version)
        played = play_greedy(self.worker, max(PROBE_EPISODES, self.test_episodes))
        batch = to_training_batch(played[:PROBE_EPISODES])
        self.probe = Probe(batch, greedy_joint_actions(self.worker.newest_agent, batch))
        return played

    def agreement(self) -> float | None:
        """Policy agreement of the newest weights on the probe (None before there is a probe)."""
        if self.probe is None:
            return None
        now = greedy_joint_actions(self.worker.newest_agent, self.probe.batch)
        return policy_agreement(now, self.probe.start_actions, self.probe.batch)

    def score(
        self, weights: dict[str, torch.Tensor], version: int, env_steps: int, *, start: bool = False, **extra
    ) -> tuple[EvalResult, dict]:
        """Score `weights` (version `version`) after `env_steps` online steps and log the row;
        `start`: these are the starting weights (their episodes become the probe). `extra` columns
        follow the common ones. Returns the result and the row."""
        if start:
            result = eval_result(self.keep_probe(weights, version), version)
        else:
            self.worker.set_weights(weights, version)
            result = evaluate(self.worker, self.test_episodes)
        row = dict(
            env_steps=env_steps,
            **result.log_fields(),
            episodes=result.episodes,
            policy_version=version,
            policy_agreement=self.agreement(),
        )
        if self.probe_values is not None and self.probe is not None:
            row.update(self.probe_values(self.probe.batch))
        row.update(extra)
        self.runlog.log("eval", **row)
        return result, row
