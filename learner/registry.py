"""The learner families: `learner.algorithm` -> the learner class that trains it, beside what the
configuration knows of it (`common/config/algorithms.py`: its acting network's outputs, the acting
back-ends and explorations that fit, the checks of its fields). The builder, the training loop and
the studies ask here; nothing else compares algorithm names.

Adding a learner family: a module in `learner/` with a class implementing `learner.interface.Learner`,
an entry in `LEARNER_CLASSES`, an `AlgorithmSpec` in `common/config/algorithms.py`, its fields in
`LearnerConfig`, and its methods in `common/config/presets.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from common.agent_stack import policy_stack
from common.config.algorithms import ALGORITHM_SPECS, AlgorithmSpec, algorithm_spec
from common.config.sections import LearnerConfig
from common.networks import agent_network
from learner.inspo_learner import InSPOLearner
from learner.interface import Learner
from learner.qmix_learner import QMixLearner

# name -> (the learner class, the acting network actors play with: (env_info, hidden size) -> module)
LEARNER_CLASSES: dict[str, tuple[type[Learner], Callable[[dict, int], nn.Module]]] = {
    # one agent network shared by all agents, Q-values
    "qmix": (QMixLearner, agent_network),
    # one policy network per agent, logits
    "inspo": (InSPOLearner, policy_stack),
}


@dataclass(frozen=True)
class LearnerFamily:
    spec: AlgorithmSpec
    learner_class: type[Learner]
    make_acting_network: Callable[[dict, int], nn.Module]

    @property
    def name(self) -> str:
        return self.spec.name

    def acting_network(self, env_info: dict, cfg: LearnerConfig) -> nn.Module:
        """A fresh network of what actors play with, which `Learner.agent_state_dict` loads into."""
        return self.make_acting_network(env_info, cfg.rnn_hidden_dim)


def _families() -> dict[str, LearnerFamily]:
    if set(LEARNER_CLASSES) != set(ALGORITHM_SPECS):  # the two registries name the same families
        raise RuntimeError(
            f"learner classes for {sorted(LEARNER_CLASSES)}, specs for {sorted(ALGORITHM_SPECS)}"
        )
    return {name: LearnerFamily(spec, *LEARNER_CLASSES[name]) for name, spec in ALGORITHM_SPECS.items()}


LEARNER_FAMILIES = _families()


def learner_family(algorithm: str) -> LearnerFamily:
    """The family `learner.algorithm` names; an unknown name is the spec lookup's one-line error."""
    return LEARNER_FAMILIES[algorithm_spec(algorithm).name]
