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
from common.transitions import TransitionBatch
from deploy.continuous_training import evaluate_returns
from deploy.studies.particle_datasets import normalised_score
from learner.continuous_registry import (
    CONTINUOUS_METHOD_NAMES,
    PHASES,
    ContinuousOfflineLearner,
    DatasetShape,
    MATD3OfflineConfig,
    PhaseSteps,
    continuous_method,
)
from learner.omsd_learner import OMSDConfig
from replay.transition_dataset import read_transition_dataset, score_bounds

METHODS = CONTINUOUS_METHOD_NAMES  # bc, matd3_bc, omsd_ind, omsd, omsd_joint: learner/continuous_registry.py


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
        continuous_method(self.method)  # an unknown method: one line naming --method

    def method_config(self):
        """The method's own config (its registry entry's class), with this trial's budget."""
        method = continuous_method(self.method)
        b = self.budget
        steps = PhaseSteps(b.behaviour_steps, b.critic_steps, b.actor_steps, b.batch_size)
        given = {OMSDConfig: self.omsd, MATD3OfflineConfig: MATD3OfflineConfig(bc_alpha=self.matd3_bc_alpha)}
        return method.configure(given.get(method.config_class), steps)

    def learner(self, card: dict) -> ContinuousOfflineLearner:
        return continuous_method(self.method).build(
            DatasetShape.from_card(card), self.method_config(), self.seed
        )


def _eval_env(seed: int) -> SpreadBatchEnv:
    return SpreadBatchEnv(64, seed=1_000_000 + seed)  # never the seeds the datasets were drawn with


def run_trial(trial: OfflineTrial, out: Path, progress: Callable[[str], None] = print) -> dict:
    """Train and evaluate one trial in `out` (resuming from `out/state.pt`); returns its result."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "done.json").exists():
        return json.loads((out / "done.json").read_text())
    arrays, card = read_transition_dataset(trial.dataset, map_name="simple_spread")
    score_bounds(card, trial.dataset)
    data = TransitionBatch.from_arrays(**arrays)
    agent = trial.learner(card)
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

    started, updates = time.perf_counter(), 0

    def pace() -> str:
        """This run's updates per second and the time left at that rate."""
        rate = updates / max(time.perf_counter() - started, 1e-9)
        where = agent.progress()
        left = (where.total_planned - where.total_done) / max(rate, 1e-9)
        return f"{rate:.1f} updates/s, ETA {duration(left)}"

    while not agent.done:
        agent.update(data.sample(budget.batch_size, sampler))
        updates += 1
        where = agent.progress()
        if where.phase in PHASES[:-1] and where.done > 0 and where.done % budget.eval_interval == 0:
            progress(
                f"{trial.method} s{trial.seed}: {where.phase} {where.done:,}/{where.planned:,} ({pace()})"
            )
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
                f"score {evals[-1]['score']:.1f} ({time.perf_counter() - started:.0f} s this run, {pace()})"
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


def _save_state(
    out: Path, agent: ContinuousOfflineLearner, sampler: torch.Generator, evals: list[dict]
) -> None:
    state = {
        "learner": agent.state_dict(),
        "sampler": sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "evals": json.dumps(evals),
    }
    with atomic_path(out / "state.pt") as tmp:
        torch.save(state, tmp)


def _save_policy(path: Path, agent: ContinuousOfflineLearner) -> None:
    """The final decentralised actors alone (tensors only: torch.load with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(agent.policy_state_dict(), tmp)


def duration(seconds: float) -> str:
    """A time left as people read it: 45s, 12m05s, 3h20m."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _write_curve(path: Path, evals: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["actor_steps", "return", "score", "episodes", "return_ci95"])
        writer.writeheader()
        writer.writerows(evals)


# The budget's fields this module's command line sets (`ovmse reproduce --map simple_spread --jobs J`
# runs its trials through it).
BUDGET_FIELDS = tuple(f.name for f in dataclasses.fields(OfflineBudget))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="particle_offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a particle-world transition dataset (required)")
    parser.add_argument("--method", required=True, choices=METHODS, help="the learner (required)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (required)")
    defaults = OfflineBudget()
    for name in BUDGET_FIELDS:
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"(default {value})")
    parser.add_argument("--beta", type=float, default=OMSDConfig().beta, help="OMSD's regulariser weight")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    budget = OfflineBudget(**{k: getattr(args, k) for k in BUDGET_FIELDS})
    for seed in (int(s) for s in args.seeds.split(",")):
        trial = OfflineTrial(
            args.dataset, args.method, seed, budget, dataclasses.replace(OMSDConfig(), beta=args.beta)
        )
        result = run_trial(trial, args.out / f"{args.method}_s{seed}", lambda line: print(line, flush=True))
        print(json.dumps({k: result[k] for k in ("method", "seed", "kind", "final_return", "final_score")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
