"""The learner interface: what the training loop, the weight publisher, checkpoints, the probe and the
builder need of a learner, whatever its algorithm. `QMixLearner` and `InSPOLearner` implement it;
`learner/registry.py` maps `learner.algorithm` to the class.

A learner is built from SMAC's env info, its `LearnerConfig` and a seed, and then:
- trains: `pretrain_behaviour` (the behaviour-cloning steps some losses need first, counted down by
  `behaviour_pretraining_left`), `update` (one gradient step on a batch, returning its metrics),
  `freeze_offline_memory` (at the switch from offline to online: OVM's memory);
- publishes: `agent_state_dict` (the acting network's weights, a CPU copy), which loads into the
  acting network its registry entry makes;
- checkpoints: `state_dict` / `load_state_dict` (tensors and plain values only) and
  `network_shape` (what a checkpoint must match to load);
- reports on probe episodes: `probe_q` (its own value estimate of the data's actions) and
  `greedy_joint_actions` (the policy it would play there); on held-out dataset episodes,
  `value_diagnostics` (agreement with the data's actions, Q of the greedy against the data's
  actions, Q of the data against its Monte-Carlo return).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from common.config.sections import LearnerConfig
from common.episode import TrainingBatch


@runtime_checkable
class Learner(Protocol):
    cfg: LearnerConfig
    device: torch.device
    precision: str  # "fp32" | "bf16": what its networks compute in
    updates: int  # gradient steps taken (the offline phase's included)

    def __init__(self, env_info: dict, cfg: LearnerConfig, seed: int = 0) -> None: ...

    # ---- training
    @property
    def behaviour_pretraining_left(self) -> int: ...

    def pretrain_behaviour(self, batch: TrainingBatch) -> float: ...

    def update(
        self, batch: TrainingBatch, phase: str, env_steps: int, episodes_seen: int
    ) -> dict[str, float]: ...

    @property
    def offline_memory_frozen(self) -> bool: ...

    def freeze_offline_memory(self) -> None: ...

    # ---- publishing
    def agent_state_dict(self) -> dict[str, torch.Tensor]: ...

    # ---- checkpoints
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def network_shape(self) -> dict: ...

    # ---- the probe
    def probe_q(self, batch: TrainingBatch) -> float: ...

    def greedy_joint_actions(self, batch: TrainingBatch) -> torch.Tensor: ...

    def value_diagnostics(self, batch: TrainingBatch) -> dict[str, float]: ...
