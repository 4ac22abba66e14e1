"""Offline trials on the particle world's datasets: OMSD, its independent variant, behaviour cloning
and MATD3+BC trained on one transition dataset, their decentralised policies evaluated on the world
and scored against the dataset card's random (0) and expert (100) returns.

A trial writes `eval.csv` (update, mean return, normalised score) and, when done, `done.json`;
every evaluation also leaves `state.pt` (the learner, the batch sampler, the evaluations so far), so
an interrupted trial continues from its last evaluation and ends as one run straight through would.

    python -m deploy.studies.particle_offline --dataset D.h5 --method omsd --seeds 0 --out runs/omsd
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.atomic_files import atomic_path, write_json
from common.envs.particles import SpreadBatchEnv
from common.errors import InputError
from common.transitions import TransitionBatch
from deploy.continuous_training import evaluate_returns
from deploy.studies.particle_datasets import normalised_score
from learner.matd3_learner import MATD3Config, MATD3Learner
from learner.omsd_learner import OMSDConfig, OMSDLearner
from replay.transition_dataset import read_transition_dataset

METHODS = ("bc", "matd3_bc", "omsd_ind", "omsd")


@dataclass(frozen=True)
class OfflineBudget:
    """Updates per phase. OMSD's paper trains far longer (its diffusion 2M steps, actors 100k on
    MPE); these defaults are what a trial costs minutes for on one core, stated with every result."""

    behaviour_steps: int = 20_000  # OMSD's diffusion models
    critic_steps: int = 20_000  # OMSD's IQL critic
    actor_steps: int = 10_000  # OMSD's actors; BC's and MATD3+BC's updates too
    batch_size: int = 512  # OMSD's (main.py --batch_size)
    eval_interval: int = 2_000  # actor updates between evaluations
    eval_episodes: int = 64
    final_episodes: int = 640


@dataclass(frozen=True)
class OfflineTrial:
    dataset: str
    method: str
    seed: int = 0
    budget: OfflineBudget = field(default_factory=OfflineBudget)
    omsd: OMSDConfig = field(default_factory=OMSDConfig)
    matd3_bc_alpha: float = 2.5  # TD3+BC's alpha

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(
                f"--method: unknown method {self.method!r}; expected one of {', '.join(METHODS)}"
            )


class _Agent:
    """What the trial loop needs of a learner: its phase, one update, actions, its state."""

    def __init__(self, trial: OfflineTrial, card: dict) -> None:
        sizes = (card["n_agents"], card["obs_size"], card["state_size"], card["action_size"])
        self.trial = trial
        budget = trial.budget
        if trial.method.startswith("omsd"):
            variant = "independent" if trial.method == "omsd_ind" else "sequential"
            cfg = dataclasses.replace(
                trial.omsd,
                variant=variant,
                behaviour_steps=budget.behaviour_steps,
                critic_steps=budget.critic_steps,
                actor_steps=budget.actor_steps,
                batch_size=budget.batch_size,
            )
            self.omsd = OMSDLearner(
                *sizes, cfg, seed=trial.seed, action_low=card["action_low"], action_high=card["action_high"]
            )
            self.matd3 = None
        else:
            info = {
                "n_agents": sizes[0],
                "obs_shape": sizes[1],
                "state_shape": sizes[2],
                "action_space": "box",
                "action_dim": sizes[3],
                "action_low": card["action_low"],
                "action_high": card["action_high"],
            }
            alpha = trial.matd3_bc_alpha if trial.method == "matd3_bc" else 0.0
            # offline: OMAR's networks and TD3+BC's learning rate (3e-4) and target rate (0.005)
            self.matd3 = MATD3Learner(info, MATD3Config(lr=3e-4, tau=0.005, bc_alpha=alpha), seed=trial.seed)
            self.omsd = None
            self.steps = 0

    def pretraining_step(self) -> tuple[str, int, int] | None:
        """OMSD's behaviour or critic phase as (name, steps done, steps planned); None after."""
        if self.omsd is None or self.omsd.phase not in ("behaviour", "critic"):
            return None
        planned = (
            self.omsd.cfg.behaviour_steps if self.omsd.phase == "behaviour" else self.omsd.cfg.critic_steps
        )
        return self.omsd.phase, self.omsd.steps[self.omsd.phase], planned

    @property
    def actor_steps(self) -> int:
        return self.omsd.steps["actors"] if self.omsd else self.steps

    @property
    def done(self) -> bool:
        return self.actor_steps >= self.trial.budget.actor_steps

    def update(self, batch: TransitionBatch) -> None:
        if self.omsd:
            self.omsd.update(batch)
            return
        if self.trial.method == "bc":
            self.matd3.update_behaviour_cloning(batch)
            self.steps += 1
        else:  # TD3's delay: an actor step every policy_delay critic steps, counted in actor steps
            self.matd3.update(batch)
            self.steps = self.matd3.updates // self.matd3.cfg.policy_delay

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.omsd:
            return self.omsd.act(torch.as_tensor(obs)).numpy()
        return self.matd3.act(obs)

    def state_dict(self) -> dict:
        return (
            self.omsd.state_dict() if self.omsd else {"matd3": self.matd3.state_dict(), "steps": self.steps}
        )

    def load_state_dict(self, state: dict) -> None:
        if self.omsd:
            self.omsd.load_state_dict(state)
        else:
            self.matd3.load_state_dict(state["matd3"])
            self.steps = int(state["steps"])


def _eval_env(seed: int) -> SpreadBatchEnv:
    return SpreadBatchEnv(64, seed=1_000_000 + seed)  # never the seeds the datasets were drawn with


def run_trial(trial: OfflineTrial, out: Path, progress: Callable[[str], None] = print) -> dict:
    """Train and evaluate one trial in `out` (resuming from `out/state.pt`); returns its result."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "done.json").exists():
        return json.loads((out / "done.json").read_text())
    arrays, card = read_transition_dataset(trial.dataset, map_name="simple_spread")
    data = TransitionBatch.from_arrays(**arrays)
    agent = _Agent(trial, card)
    sampler = torch.Generator().manual_seed(trial.seed)
    torch.manual_seed(trial.seed)  # what draws from torch's global generator (dropout) repeats too
    evals: list[dict] = []
    if (out / "state.pt").exists():
        saved = torch.load(out / "state.pt", weights_only=True)
        agent.load_state_dict(saved["learner"])
        sampler.set_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        evals = json.loads(saved["evals"])
    budget = trial.budget

    def score(episodes: int) -> dict:
        returns = evaluate_returns(agent.act, _eval_env(trial.seed), episodes)
        mean = float(returns.mean())
        half_width = 1.96 * float(returns.std(ddof=1)) / np.sqrt(episodes) if episodes > 1 else float("nan")
        return {
            "actor_steps": agent.actor_steps,
            "return": mean,
            "score": normalised_score(mean, card["random_return"], card["expert_return"]),
            "episodes": episodes,
            "return_ci95": half_width,  # normal-approximation half-width of the mean return
        }

    started = time.perf_counter()
    while not agent.done:
        agent.update(data.sample(budget.batch_size, sampler))
        pretraining = agent.pretraining_step()
        if pretraining and pretraining[1] > 0 and pretraining[1] % budget.eval_interval == 0:
            name, done, planned = pretraining
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress(f"{trial.method} s{trial.seed}: {name} {done:,}/{planned:,} ({rate:.1f} updates/s)")
        steps = agent.actor_steps
        if (
            steps > 0
            and steps % budget.eval_interval == 0
            and (not evals or evals[-1]["actor_steps"] != steps)
        ):
            evals.append(score(budget.eval_episodes))
            _save_state(out, agent, sampler, evals)
            progress(
                f"{trial.method} s{trial.seed}: {steps:,}/{budget.actor_steps:,} actor steps, "
                f"score {evals[-1]['score']:.1f} ({time.perf_counter() - started:.0f} s this run)"
            )
    final = score(budget.final_episodes)
    result = {
        "method": trial.method,
        "seed": trial.seed,
        "dataset": Path(trial.dataset).name,
        "kind": card["kind"],
        "final_return": final["return"],
        "final_score": final["score"],
        "final_score_ci95": 100.0 * final["return_ci95"] / (card["expert_return"] - card["random_return"]),
        "final_episodes": budget.final_episodes,
        "budget": dataclasses.asdict(budget),
        "curve": evals,
    }
    _write_curve(out / "eval.csv", evals)
    _save_policy(out / "policy.pt", agent)
    write_json(out / "done.json", result)
    (out / "state.pt").unlink(missing_ok=True)
    return result


def _save_state(out: Path, agent: _Agent, sampler: torch.Generator, evals: list[dict]) -> None:
    state = {
        "learner": agent.state_dict(),
        "sampler": sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "evals": json.dumps(evals),
    }
    with atomic_path(out / "state.pt") as tmp:
        torch.save(state, tmp)


def _save_policy(path: Path, agent: _Agent) -> None:
    """The final decentralised actors alone (tensors only: torch.load with weights_only=True)."""
    actors = agent.omsd.policies if agent.omsd else agent.matd3.actors
    with atomic_path(path) as tmp:
        torch.save(actors.state_dict(), tmp)


def _write_curve(path: Path, evals: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["actor_steps", "return", "score", "episodes", "return_ci95"])
        writer.writeheader()
        writer.writerows(evals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="particle_offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a particle-world transition dataset (required)")
    parser.add_argument("--method", required=True, choices=METHODS, help="the learner (required)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (required)")
    defaults = OfflineBudget()
    for name in ("behaviour_steps", "critic_steps", "actor_steps", "eval_interval", "final_episodes"):
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"(default {value})")
    parser.add_argument("--beta", type=float, default=OMSDConfig().beta, help="OMSD's regulariser weight")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    budget = OfflineBudget(
        **{
            k: getattr(args, k)
            for k in ("behaviour_steps", "critic_steps", "actor_steps", "eval_interval", "final_episodes")
        }
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        trial = OfflineTrial(
            args.dataset, args.method, seed, budget, dataclasses.replace(OMSDConfig(), beta=args.beta)
        )
        result = run_trial(trial, args.out / f"{args.method}_s{seed}", lambda line: print(line, flush=True))
        print(json.dumps({k: result[k] for k in ("method", "seed", "kind", "final_return", "final_score")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
