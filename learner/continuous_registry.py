"""The continuous-action offline methods: method name -> its config dataclass, a factory of the object
that trains it on transitions, and a loader of the policy it saves. The particle world's trials
(`deploy/studies/particle_offline.py`) and commands (`ovmse pretrain/evaluate/reproduce --map
simple_spread`) ask here; nothing else compares these names. (SMAC's episode learners are
`learner/registry.py`'s.)

    method = continuous_method("omsd")
    cfg = method.configure(None, PhaseSteps(behaviour=20_000, critic=20_000, actors=10_000))
    learner = method.build(DatasetShape.from_card(card), cfg, seed=0)
    while not learner.done:
        learner.update(data.sample(cfg.batch_size, generator))
    act = method.load_policy(method.policy_shape(shape, cfg), learner.policy_state_dict())

Adding a method: a class implementing `ContinuousOfflineLearner` and an entry in
`CONTINUOUS_METHODS` (its config class, `configure`, `build`, `policy_shape`, `load_policy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from common.errors import InputError
from common.transitions import TransitionBatch
from learner.matd3_learner import MATD3Config, MATD3Learner
from learner.omsd_learner import OMSDConfig, OMSDLearner, Policies, action_box, box_from_unit

PHASES = ("behaviour", "critic", "actors")  # in the order they run; "done" after the last


@dataclass(frozen=True)
class DatasetShape:
    """The sizes and action box of a transition dataset (its card's)."""

    n_agents: int
    obs_size: int
    state_size: int
    action_size: int
    action_low: float | list[float]
    action_high: float | list[float]

    @classmethod
    def from_card(cls, card: dict) -> DatasetShape:
        return cls(
            *(int(card[k]) for k in ("n_agents", "obs_size", "state_size", "action_size")),
            card["action_low"],
            card["action_high"],
        )


@dataclass(frozen=True)
class PhaseSteps:
    """Updates per phase and the batch: what a run's budget asks of any method (a method trains the
    phases it has; bc and matd3_bc have actors only)."""

    behaviour: int
    critic: int
    actors: int
    batch_size: int = 512


@dataclass(frozen=True)
class Progress:
    """Where a learner stands: the phase due, its steps done and planned, and the whole run's updates
    done and planned (for a rate and an ETA)."""

    phase: str
    done: int
    planned: int
    total_done: int
    total_planned: int


@runtime_checkable
class ContinuousOfflineLearner(Protocol):
    """What a trial needs of an offline learner on transitions."""

    @property
    def phase(self) -> str:
        """ "behaviour", "critic", "actors" or "done"."""

    @property
    def done(self) -> bool: ...

    @property
    def actor_steps(self) -> int:
        """Actor updates so far: what evaluations are scheduled by."""

    def progress(self) -> Progress: ...

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        """One step of the phase that is due."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy decentralised actions [B, n, A] in the world's box for observations [B, n, O]."""

    def state_dict(self) -> dict:
        """Everything to continue from: tensors and plain values only (torch.load weights_only)."""

    def load_state_dict(self, state: dict) -> None: ...

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The decentralised actors' weights alone: what a saved policy holds."""


# --- OMSD and its independent and joint variants ------------------------------------------------


class OMSDOffline:
    """OMSD's three phases (`OMSDLearner`) as a `ContinuousOfflineLearner`."""

    def __init__(self, shape: DatasetShape, cfg: OMSDConfig, seed: int) -> None:
        self.learner = OMSDLearner(
            shape.n_agents,
            shape.obs_size,
            shape.state_size,
            shape.action_size,
            cfg,
            seed=seed,
            action_low=shape.action_low,
            action_high=shape.action_high,
        )
        self.planned = {
            "behaviour": cfg.behaviour_steps,
            "critic": cfg.critic_steps,
            "actors": cfg.actor_steps,
        }

    @property
    def phase(self) -> str:
        return self.learner.phase

    @property
    def actor_steps(self) -> int:
        return self.learner.steps["actors"]

    @property
    def done(self) -> bool:
        return self.actor_steps >= self.planned["actors"]

    def progress(self) -> Progress:
        phase = self.phase
        step = "actors" if phase == "done" else phase
        return Progress(
            phase,
            self.learner.steps[step],
            self.planned[step],
            sum(self.learner.steps.values()),
            sum(self.planned.values()),
        )

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        return self.learner.update(batch)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.learner.act(torch.as_tensor(obs)).numpy()

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        return self.learner.policies.state_dict()


def _omsd_configure(variant: str) -> Callable[[OMSDConfig | None, PhaseSteps], OMSDConfig]:
    def configure(given: OMSDConfig | None, steps: PhaseSteps) -> OMSDConfig:
        return dataclasses.replace(
            given or OMSDConfig(),
            variant=variant,
            behaviour_steps=steps.behaviour,
            critic_steps=steps.critic,
            actor_steps=steps.actors,
            batch_size=steps.batch_size,
        )

    return configure


def _omsd_policy_shape(shape: DatasetShape, cfg: OMSDConfig) -> dict:
    return {
        "n_agents": shape.n_agents,
        "obs_size": shape.obs_size,
        "action_size": shape.action_size,
        "hidden": cfg.policy_hidden,
        "layers": cfg.policy_layers,
        "action_low": shape.action_low,
        "action_high": shape.action_high,
    }


def _omsd_load_policy(shape: dict, weights: dict[str, torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    policies = Policies(
        shape["n_agents"], shape["obs_size"], shape["action_size"], shape["hidden"], shape["layers"]
    )
    policies.load_state_dict(weights)
    policies.eval()
    low, high = action_box(shape["action_low"], shape["action_high"], shape["action_size"])

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:  # OMSDLearner.act's arithmetic, so the same actions
        return box_from_unit(policies(torch.as_tensor(obs, dtype=torch.float32)), low, high).numpy()

    return act


# --- behaviour cloning and MATD3+BC -------------------------------------------------------------


@dataclass(frozen=True)
class MATD3OfflineConfig:
    """bc and matd3_bc: MATD3's per-agent actors (and, for matd3_bc, its twin critic) on the data
    alone. OMAR's networks with TD3+BC's learning rate and target rate."""

    actor_steps: int = 10_000
    batch_size: int = 512
    bc_alpha: float = 2.5  # TD3+BC's alpha (matd3_bc; bc clones alone)
    lr: float = 3e-4  # TD3+BC
    tau: float = 0.005  # TD3+BC
    hidden: int = 64  # OMAR's MPE networks

    def __post_init__(self) -> None:
        for name in ("actor_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"MATD3OfflineConfig.{name}: must be at least 1, got {getattr(self, name)}")

    def matd3(self, cloning: bool) -> MATD3Config:
        return MATD3Config(
            hidden=self.hidden, lr=self.lr, tau=self.tau, bc_alpha=0.0 if cloning else self.bc_alpha
        )


def _matd3_info(shape: DatasetShape | dict) -> dict:
    get = shape.get if isinstance(shape, dict) else lambda k: getattr(shape, k)
    return {
        "n_agents": get("n_agents"),
        "obs_shape": get("obs_size"),
        "state_shape": get("state_size"),
        "action_space": "box",
        "action_dim": get("action_size"),
        "action_low": get("action_low"),
        "action_high": get("action_high"),
    }


class MATD3Offline:
    """Behaviour cloning (`cloning`) or MATD3+BC on `MATD3Learner`, counted in actor steps (MATD3+BC
    takes `policy_delay` critic steps per actor step)."""

    def __init__(self, shape: DatasetShape, cfg: MATD3OfflineConfig, seed: int, cloning: bool) -> None:
        self.learner = MATD3Learner(_matd3_info(shape), cfg.matd3(cloning), seed=seed)
        self.cloning = cloning
        self.planned = cfg.actor_steps
        self.steps = 0

    @property
    def phase(self) -> str:
        return "done" if self.done else "actors"

    @property
    def actor_steps(self) -> int:
        return self.steps

    @property
    def done(self) -> bool:
        return self.steps >= self.planned

    def progress(self) -> Progress:
        per_actor_step = 1 if self.cloning else self.learner.cfg.policy_delay
        done = self.steps if self.cloning else self.learner.updates
        return Progress(self.phase, self.steps, self.planned, done, self.planned * per_actor_step)

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        if self.cloning:
            metrics = self.learner.update_behaviour_cloning(batch)
            self.steps += 1
            return metrics
        metrics = self.learner.update(batch)  # an actor step every policy_delay critic steps
        self.steps = self.learner.updates // self.learner.cfg.policy_delay
        return metrics

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.learner.act(obs)

    def state_dict(self) -> dict:
        return {"matd3": self.learner.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["matd3"])
        self.steps = int(state["steps"])

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        return self.learner.actors.state_dict()


def _matd3_configure(given: MATD3OfflineConfig | None, steps: PhaseSteps) -> MATD3OfflineConfig:
    return dataclasses.replace(
        given or MATD3OfflineConfig(), actor_steps=steps.actors, batch_size=steps.batch_size
    )


def _matd3_policy_shape(shape: DatasetShape, cfg: MATD3OfflineConfig) -> dict:
    return {**dataclasses.asdict(shape), "hidden": cfg.hidden}


def _matd3_load_policy(shape: dict, weights: dict[str, torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    learner = MATD3Learner(_matd3_info(shape), MATD3Config(hidden=shape["hidden"]))
    learner.actors.load_state_dict(weights)
    return learner.act  # the trial's own act: the same actions


# --- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContinuousMethod:
    """One offline method on transitions."""

    name: str
    summary: str
    config_class: type
    phases: tuple[str, ...]  # the phases it trains (the budget flags that apply to it)
    # (the caller's config of `config_class`, or None for its defaults; the run's steps) -> its config
    configure: Callable[[Any, PhaseSteps], Any]
    # (the dataset's shape, its config, seed) -> the learner
    build: Callable[[DatasetShape, Any, int], ContinuousOfflineLearner]
    # (the dataset's shape, its config) -> plain values that rebuild its policy
    policy_shape: Callable[[DatasetShape, Any], dict]
    # (policy_shape, policy_state_dict) -> act(obs [B, n, O]) -> box actions [B, n, A]
    load_policy: Callable[[dict, dict[str, torch.Tensor]], Callable[[np.ndarray], np.ndarray]]


CONTINUOUS_METHODS: dict[str, ContinuousMethod] = {
    m.name: m
    for m in (
        ContinuousMethod(
            "bc",
            "behaviour cloning: MATD3's per-agent actors regressed on the data's actions",
            MATD3OfflineConfig,
            ("actors",),
            _matd3_configure,
            lambda shape, cfg, seed: MATD3Offline(shape, cfg, seed, cloning=True),
            _matd3_policy_shape,
            _matd3_load_policy,
        ),
        ContinuousMethod(
            "matd3_bc",
            "MATD3+BC: MATD3 with TD3+BC's actor loss (alpha 2.5)",
            MATD3OfflineConfig,
            ("actors",),
            _matd3_configure,
            lambda shape, cfg, seed: MATD3Offline(shape, cfg, seed, cloning=False),
            _matd3_policy_shape,
            _matd3_load_policy,
        ),
        ContinuousMethod(
            "omsd_ind",
            "OMSD's independent ablation: each agent's behaviour model on its own observation",
            OMSDConfig,
            PHASES,
            _omsd_configure("independent"),
            OMSDOffline,
            _omsd_policy_shape,
            _omsd_load_policy,
        ),
        ContinuousMethod(
            "omsd",
            "OMSD: sequential score decomposition (arXiv 2505.05968)",
            OMSDConfig,
            PHASES,
            _omsd_configure("sequential"),
            OMSDOffline,
            _omsd_policy_shape,
            _omsd_load_policy,
        ),
        ContinuousMethod(
            "omsd_joint",
            "OMSD's joint ablation: one behaviour model of the joint action on every observation",
            OMSDConfig,
            PHASES,
            _omsd_configure("joint"),
            OMSDOffline,
            _omsd_policy_shape,
            _omsd_load_policy,
        ),
    )
}
CONTINUOUS_METHOD_NAMES = tuple(CONTINUOUS_METHODS)


def continuous_method(name: str, flag: str = "--method") -> ContinuousMethod:
    """The method `name`; an unknown one is a one-line `InputError` naming `flag`."""
    try:
        return CONTINUOUS_METHODS[name]
    except KeyError:
        raise InputError(
            f"{flag}: unknown method {name!r}; expected one of {', '.join(CONTINUOUS_METHOD_NAMES)}"
        ) from None
