"""What the configuration knows of each learner family (`learner.algorithm`): its name, what its
acting network outputs, which acting back-ends and explorations fit it, and the checks of its own
fields. The learner classes themselves are in `learner/registry.py`, which keys them by the names
here; nothing outside these two registries (and the presets) compares algorithm names.

Adding a learner family: an `AlgorithmSpec` here (with a check of its fields), its learner class in
`learner/registry.py`, its fields in `LearnerConfig` and its methods in `presets.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.config.problems import Problems
from common.config.sections import (
    ACTING_BACK_ENDS,
    EXPLORATIONS,
    INSPO_LOCAL_CRITICS,
    INSPO_ONLINE_ANCHORS,
    LearnerConfig,
)


@dataclass(frozen=True)
class AlgorithmSpec:
    """One learner family as the configuration sees it."""

    name: str
    display_name: str  # as messages name it
    summary: str
    # "q_values" (greedy over available actions, epsilon-greedy or SE exploration) | "logits" (a
    # policy: greedy works the same, and actions can also be sampled from it)
    acting_output: str
    # One network shared by all agents: the acting back-ends that batch every agent's rows in one
    # product (numpy, tiles) apply to it; per-agent networks act through torch only.
    shared_agent_network: bool
    # Online training only makes sense from a pre-trained policy (run.dataset or run.init_checkpoint).
    fine_tunes_only: bool
    # offline_updates 0 with behaviour cloning still gives a policy (the cloned behaviour).
    cloning_alone_is_a_policy: bool
    # The offline phase's name for sweeps: trials with the same name share one pre-training.
    pretraining_key: Callable[[LearnerConfig, bool], str]
    # The checks of the family's own fields (the shared fields are checked for every family).
    check_fields: Callable[[Problems, LearnerConfig], None]

    @property
    def acting_back_ends(self) -> tuple[str, ...]:
        return ACTING_BACK_ENDS if self.shared_agent_network else ("auto", "torch")

    @property
    def explorations(self) -> tuple[str, ...]:
        if self.acting_output == "logits":
            return EXPLORATIONS
        return tuple(e for e in EXPLORATIONS if e != "policy_sample")


def _qmix_pretraining_key(learner: LearnerConfig, policy_updates: bool) -> str:
    """ "cql", "cfcql", "cql_calql", ...: the offline loss."""
    return learner.offline_cql + ("_calql" if learner.calql_floor else "")


def _inspo_pretraining_key(learner: LearnerConfig, policy_updates: bool) -> str:
    return "inspo" if policy_updates else "bc"


def _no_own_fields(p: Problems, learner: LearnerConfig) -> None:
    """QMIX's fields are the shared ones, checked for every family."""


def _inspo_fields(p: Problems, learner: LearnerConfig) -> None:
    p.at_least("learner.behaviour_pretrain_updates", learner.behaviour_pretrain_updates, 1)


def inspo_field_ranges(p: Problems, learner: LearnerConfig) -> None:
    """The ranges of InSPO's fields; they hold for any algorithm, so a file switched to inspo later
    is already sound."""
    p.at_least("learner.inspo_alpha", learner.inspo_alpha, 0)
    p.at_least("learner.inspo_beta", learner.inspo_beta, 0)
    p.require(
        learner.inspo_alpha + learner.inspo_beta > 0,
        "learner.inspo_beta",
        "learner.inspo_alpha + learner.inspo_beta must be > 0 (their sum is the policy's temperature)",
    )
    p.require(
        0 < learner.inspo_expectile < 1,
        "learner.inspo_expectile",
        f"must be in (0, 1), got {p.show(learner.inspo_expectile)}",
    )
    p.positive("learner.inspo_max_log_weight", learner.inspo_max_log_weight)
    p.at_least("learner.inspo_ratio_clip", learner.inspo_ratio_clip, 1.0)
    p.at_least("learner.inspo_agent_updates", learner.inspo_agent_updates, 1)
    p.one_of("learner.inspo_online_anchor", learner.inspo_online_anchor, INSPO_ONLINE_ANCHORS)
    p.one_of("learner.inspo_local_critics", learner.inspo_local_critics, INSPO_LOCAL_CRITICS)


ALGORITHM_SPECS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            name="qmix",
            display_name="QMIX",
            summary="QMixLearner: QMIX with CQL / CFCQL / Cal-QL and OVM (every OVMSE-paper method)",
            acting_output="q_values",
            shared_agent_network=True,
            fine_tunes_only=False,
            cloning_alone_is_a_policy=False,
            pretraining_key=_qmix_pretraining_key,
            check_fields=_no_own_fields,
        ),
        AlgorithmSpec(
            name="inspo",
            display_name="InSPO",
            summary="InSPOLearner: in-sample sequential policy optimisation (per-agent policies)",
            acting_output="logits",
            shared_agent_network=False,
            fine_tunes_only=True,
            cloning_alone_is_a_policy=True,
            pretraining_key=_inspo_pretraining_key,
            check_fields=_inspo_fields,
        ),
    )
}
ALGORITHMS = tuple(ALGORITHM_SPECS)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of `learner.algorithm` `name` (a validated configuration always has one)."""
    try:
        return ALGORITHM_SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown learner.algorithm {name!r}: expected one of {', '.join(ALGORITHMS)}"
        ) from None
