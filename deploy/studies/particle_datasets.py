"""The particle world's offline datasets, made the way OMAR made its own (its files are not reachable
from here): an online MATD3 learner trained on simple_spread, then

- `expert`: transitions of the best MATD3 snapshot, acting with its training noise;
- `medium`: the same from the snapshot whose normalised score is nearest 50 (0 = uniform random
  actions, 100 = the expert; in a normal run an early one);
- `medium_replay`: MATD3's replay buffer up to that medium snapshot;
- `random`: uniform random actions;
- `mixed`: experts that coordinate differently (which agent covers which landmark): the expert
  above acting on observations whose landmark order is rotated by 0, 1, ... `mixed_experts - 1`
  places (its fixed roles rotate with it; MATD3 runs of other seeds were measured to learn the same
  roles), equal shares, the expert's noise. Its card records each rotation's greedy return and how
  often each pair's landmark assignments disagree on the same starts
  (common/envs/particle_assignment.py); a warning says when they coordinate alike (the data is then
  not multimodal).

Each file's card holds the random and expert returns (greedy, `score_episodes` episodes each) that
normalised scores on it are measured against (the canonical expert's, for `mixed` too). Resumable: a
finished file is kept; training is redone only while `matd3_snapshots.pt` is missing.

    python -m deploy.studies.particle_datasets --out runs/particle_datasets
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from common.atomic_files import atomic_path, write_json
from common.envs.particle_assignment import (
    assignment_signature,
    coverage,
    disagreement_matrix,
    rotate_landmarks,
    shared_roles,
    usual_assignment,
)
from common.envs.particles import DATASET_KINDS, SpreadBatchEnv
from common.errors import InputError
from deploy.continuous_training import (
    ContinuousRunConfig,
    evaluate_returns,
    random_actions,
    step_transitions,
    train_matd3,
)
from learner.matd3_learner import MATD3Learner
from replay.transition_dataset import write_transition_dataset

MAP = "simple_spread"
SIGNATURE_EPISODES = 256  # the seeded starts on which the mixed experts' assignments are compared
SIGNATURE_SEED = 23  # their seed, offset from the config's
ALIKE_BELOW = 0.2  # the largest pairwise disagreement under which the experts coordinate alike


@dataclass(frozen=True)
class ParticleDatasetConfig:
    env_steps: int = 1_000_000  # MATD3's online budget
    transitions: int = 1_000_000  # per dataset (OMAR's MPE datasets hold 1M)
    eval_interval: int = 50_000
    score_episodes: int = 1_000
    behaviour_noise: float = 0.1  # the expert's and medium's acting noise: MATD3's own (unit space)
    num_envs: int = 256  # episodes stepped together while a dataset is drawn
    warmup: int = 10_000  # MATD3's random-action transitions before its first update
    batch_size: int = 1024  # MATD3's batch
    seed: int = 0
    mixed_experts: int = 3  # the mixed dataset's experts: the expert under this many landmark rotations


def make_env(num_envs: int, seed: int) -> SpreadBatchEnv:
    return SpreadBatchEnv(num_envs, seed=seed)


def normalised_score(mean_return: float, random_return: float, expert_return: float) -> float:
    """0 at the random policy's return, 100 at the expert's."""
    return 100.0 * (mean_return - random_return) / (expert_return - random_return)


def pick_medium(returns: list[float], expert: int, random_return: float, expert_return: float) -> int:
    """The snapshot, other than the expert's, whose normalised score is nearest 50."""
    candidates = [i for i in range(len(returns)) if i != expert]
    if not candidates:
        raise ValueError("MATD3 left one snapshot: no medium policy (evaluate more often)")

    def distance_from_50(i: int) -> float:
        return abs(normalised_score(returns[i], random_return, expert_return) - 50.0)

    return min(candidates, key=distance_from_50)


def rollout(
    act: Callable[[np.ndarray], np.ndarray], count: int, cfg: ParticleDatasetConfig, seed: int
) -> dict[str, np.ndarray]:
    """`count` transitions of `act` (obs -> box actions) from fresh episodes."""
    env = make_env(cfg.num_envs, seed)
    obs = env.reset()
    parts: list[dict[str, np.ndarray]] = []
    held = 0
    while held < count:
        actions = act(obs.obs)
        step = env.step(actions)
        parts.append(step_transitions(obs, actions, step))
        held += env.num_envs
        obs = step.next
    return {name: np.concatenate([p[name] for p in parts])[:count] for name in parts[0]}


def _actor_policy(
    info: dict,
    actors: dict[str, torch.Tensor],
    noise: float,
    rng: np.random.Generator,
    landmark_shift: int = 0,
):
    learner = MATD3Learner(info)
    learner.actors.load_state_dict(actors)
    n = info["n_agents"]  # one landmark per agent

    def act(obs):
        obs = rotate_landmarks(obs, n, landmark_shift) if landmark_shift else obs
        return learner.act(obs, noise, rng) if noise > 0 else learner.act(obs)

    return act


def _run_config(cfg: ParticleDatasetConfig, seed: int) -> ContinuousRunConfig:
    return ContinuousRunConfig(
        env_steps=cfg.env_steps,
        eval_interval=cfg.eval_interval,
        warmup=cfg.warmup,
        batch_size=cfg.batch_size,
        seed=seed,
    )


def _greedy_return(
    info: dict, actors: dict[str, torch.Tensor], cfg: ParticleDatasetConfig, landmark_shift: int = 0
) -> float:
    """The expert return of a card: greedy, `score_episodes` episodes from the same starts."""
    act = _actor_policy(info, actors, 0.0, np.random.default_rng(0), landmark_shift)  # greedy: draws nothing
    return float(evaluate_returns(act, make_env(64, cfg.seed + 13), cfg.score_episodes).mean())


def make_datasets(out: Path, cfg: ParticleDatasetConfig, progress: Callable[[str], None] = print) -> dict:
    info = make_env(1, 0).get_env_info()
    if not 2 <= cfg.mixed_experts <= info["n_agents"]:
        raise InputError(
            f"mixed_experts: must be 2 to {info['n_agents']} (distinct rotations of the landmarks), "
            f"got {cfg.mixed_experts}"
        )
    out.mkdir(parents=True, exist_ok=True)
    snapshots_path = out / "matd3_snapshots.pt"
    summary_path = out / "summary.json"
    if not snapshots_path.exists():
        run = train_matd3(make_env, _run_config(cfg, cfg.seed), progress)
        returns = [s.mean_return for s in run.snapshots]
        expert = int(np.argmax(returns))
        rng = np.random.default_rng(cfg.seed + 7)
        random_return = float(
            evaluate_returns(
                lambda o: random_actions(rng, (*o.shape[:2], info["action_dim"]), 0.0, 1.0),
                make_env(64, cfg.seed + 11),
                cfg.score_episodes,
            ).mean()
        )
        expert_return = _greedy_return(info, run.snapshots[expert].actors, cfg)
        if expert_return <= random_return:  # the files are still written; runs on them are refused
            progress(
                f"warning: the expert's return {expert_return:.2f} does not beat random's "
                f"{random_return:.2f}: no score can be normalised on these datasets "
                "(train longer: --env-steps)"
            )
        medium = pick_medium(returns, expert, random_return, expert_return)
        held = run.buffer.arrays()
        until = run.snapshots[medium].buffer_transitions
        common = _card_common(info, cfg, random_return, expert_return)
        write_transition_dataset(
            out / "simple_spread_medium_replay.h5",
            {k: v[:until] for k, v in held.items()},
            {**common, "kind": "medium_replay", "policy": f"MATD3's replay buffer up to {until:,} steps"},
        )
        state = {
            "returns": returns,
            "env_steps": [s.env_steps for s in run.snapshots],
            "expert": expert,
            "medium": medium,
            "random_return": random_return,
            "expert_return": expert_return,
            **{f"actors_{i}": s.actors for i, s in enumerate(run.snapshots)},
        }
        with atomic_path(snapshots_path) as tmp:  # tensors and plain values: weights_only loads it
            torch.save(state, tmp)
    state = torch.load(snapshots_path, weights_only=True)
    common = _card_common(info, cfg, state["random_return"], state["expert_return"])
    rng = np.random.default_rng(cfg.seed + 17)
    policies = {
        "expert": _actor_policy(info, state[f"actors_{state['expert']}"], cfg.behaviour_noise, rng),
        "medium": _actor_policy(info, state[f"actors_{state['medium']}"], cfg.behaviour_noise, rng),
        "random": lambda obs: random_actions(rng, (*obs.shape[:2], info["action_dim"]), 0.0, 1.0),
    }
    for kind, act in policies.items():
        path = out / f"simple_spread_{kind}.h5"
        if path.exists():
            continue
        started = time.perf_counter()
        arrays = rollout(act, cfg.transitions, cfg, seed=cfg.seed + 100 + DATASET_KINDS.index(kind))
        snapshot = state["expert"] if kind == "expert" else state["medium"]
        how = (
            "uniform random actions"
            if kind == "random"
            else (f"MATD3 snapshot at {state['env_steps'][snapshot]:,} steps, noise {cfg.behaviour_noise}")
        )
        write_transition_dataset(path, arrays, {**common, "kind": kind, "policy": how})
        progress(f"{path.name}: {cfg.transitions:,} transitions in {time.perf_counter() - started:.0f} s")
    mixed_path = out / "simple_spread_mixed.h5"
    if not mixed_path.exists():
        _write_mixed(mixed_path, _mixed_experts(cfg, info, state), state, cfg, info, common, progress)
    mixed = _read_card(mixed_path)
    summary = {
        "map": MAP,
        "config": asdict(cfg),
        "snapshot_env_steps": state["env_steps"],
        "snapshot_returns": state["returns"],
        "expert_snapshot": state["expert"],
        "medium_snapshot": state["medium"],
        "random_return": state["random_return"],
        "expert_return": state["expert_return"],
        "medium_score": normalised_score(
            state["returns"][state["medium"]], state["random_return"], state["expert_return"]
        ),
        "mixed_experts": mixed["experts"],
        "mixed_disagreement": mixed["assignment_disagreement"],
    }
    write_json(summary_path, summary)
    return summary


def _mixed_experts(cfg: ParticleDatasetConfig, info: dict, state: dict) -> list[dict]:
    """The canonical expert (from matd3_snapshots.pt) under landmark rotations 0, 1, ...: rotation 0
    is the expert itself, with its card's return; the others' greedy returns are measured the same
    way."""
    actors = state[f"actors_{state['expert']}"]

    def greedy_return(shift: int) -> float:
        return state["expert_return"] if shift == 0 else _greedy_return(info, actors, cfg, shift)

    return [
        {"landmark_shift": shift, "greedy_return": greedy_return(shift)} for shift in range(cfg.mixed_experts)
    ]


def _write_mixed(
    path: Path,
    experts: list[dict],
    state: dict,
    cfg: ParticleDatasetConfig,
    info: dict,
    common: dict,
    progress: Callable[[str], None],
) -> None:
    """Equal shares of `transitions` from each expert in turn, acting with the expert's noise, and a
    card saying how often each pair's landmark assignments disagree (greedy, the same starts)."""
    started = time.perf_counter()
    actors = state[f"actors_{state['expert']}"]  # every expert is this snapshot, rotated
    steps = state["env_steps"][state["expert"]]
    signatures = [
        assignment_signature(
            _actor_policy(info, actors, 0.0, np.random.default_rng(0), e["landmark_shift"]),
            SIGNATURE_EPISODES,
            cfg.seed + SIGNATURE_SEED,
            info["n_agents"],
        )
        for e in experts
    ]
    disagreement = disagreement_matrix(signatures)
    k = len(experts)
    shares = [cfg.transitions // k + (i < cfg.transitions % k) for i in range(k)]
    rng = np.random.default_rng(cfg.seed + 19)
    parts = []
    for i, (expert, share) in enumerate(zip(experts, shares, strict=True)):
        if share:  # each expert its own starts: battle seeds num_envs apart do not overlap
            act = _actor_policy(info, actors, cfg.behaviour_noise, rng, expert["landmark_shift"])
            seed = cfg.seed + 100 + DATASET_KINDS.index("mixed") + i * cfg.num_envs
            parts.append(rollout(act, share, cfg, seed=seed))
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    card = {
        **common,
        "kind": "mixed",
        "policy": (
            f"the expert snapshot at {steps:,} steps on observations with the landmark "
            f"order rotated by {', '.join(str(e['landmark_shift']) for e in experts)}, noise "
            f"{cfg.behaviour_noise}, equal shares in that order"
        ),
        "experts": [
            {
                "landmark_shift": int(e["landmark_shift"]),
                "greedy_return": float(e["greedy_return"]),
                "transitions": share,
                "assignment_coverage": coverage(signature),
                # its fixed roles, if it holds to any: the usual permutation and how often
                **dict(zip(("usual_assignment", "usual_share"), usual_assignment(signature), strict=True)),
            }
            for e, share, signature in zip(experts, shares, signatures, strict=True)
        ],
        "assignment_disagreement": disagreement,
        "signature_episodes": SIGNATURE_EPISODES,
    }
    write_transition_dataset(path, arrays, card)
    progress(f"{path.name}: {cfg.transitions:,} transitions in {time.perf_counter() - started:.0f} s")
    most = max(disagreement[i][j] for i in range(k) for j in range(k) if i != j)
    roles = shared_roles([usual_assignment(signature) for signature in signatures])
    if most < ALIKE_BELOW:
        progress(
            f"warning: the mixed experts coordinate alike: no two disagree in landmark assignment on "
            f"more than {most:.0%} of {SIGNATURE_EPISODES} starts, so the mixed data is not multimodal"
        )
    elif roles is not None:
        progress(
            f"warning: the mixed experts coordinate alike: each holds the same roles (agent i at "
            f"landmark {roles}[i]) in most starts, so the mixed data is not multimodal in its roles"
        )


def _read_card(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["card"])


def _card_common(info: dict, cfg: ParticleDatasetConfig, random_return: float, expert_return: float) -> dict:
    return {
        "map": MAP,
        "action_low": info["action_low"],
        "action_high": info["action_high"],
        "random_return": random_return,
        "expert_return": expert_return,
        "score_episodes": cfg.score_episodes,
        "seed": cfg.seed,
        "made_by": "python -m deploy.studies.particle_datasets",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="particle_datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the datasets (required)")
    defaults = ParticleDatasetConfig()
    names = ("env_steps", "transitions", "eval_interval", "score_episodes", "seed", "mixed_experts")
    for name in names:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, type=int, default=getattr(defaults, name), help=f"(default {getattr(defaults, name)})"
        )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ParticleDatasetConfig(**{k: getattr(args, k) for k in names})
    summary = make_datasets(args.out, cfg, lambda line: print(line, flush=True))
    shown = ("random_return", "expert_return", "medium_score", "mixed_disagreement")
    print(json.dumps({k: summary[k] for k in shown}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
