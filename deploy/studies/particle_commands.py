"""The `ovmse` commands on a particle world (simple_spread): the CLI sends a command here when its
--map is one (or, for `evaluate`, when --checkpoint is a saved particle policy); every SMAC map keeps
its own path.

    ovmse dataset particles --out data                      # simple_spread_{expert,medium,...}.h5
    ovmse pretrain --map simple_spread --method omsd --dataset-kind expert --out runs/omsd_expert
    ovmse evaluate --map simple_spread --checkpoint runs/omsd_expert/agent.pt --episodes 640
    ovmse reproduce --map simple_spread --methods bc,matd3_bc,omsd_ind,omsd --seeds 5 --dataset-kind medium

`pretrain` is one offline trial (`deploy/studies/particle_offline.py`: resumable from its state.pt)
and then `agent.pt`, the saved policy: the final actors' tensors with what rebuilds them (the
method's policy shape, the action box) and what scores them (the dataset card's random and expert
returns). `reproduce` runs method x seed trials (`--jobs` at a time) and writes results.json
(marl-eval's raw format), table.md and curves_score.png (`deploy/studies/particle_report.py`).

This module imports no torch at the top: `ovmse --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from common.envs.particles import DATASET_KINDS
from common.errors import InputError

PARTICLE_MAPS = ("simple_spread",)
DATA_DIR = Path("data")  # where --dataset-kind K looks: data/simple_spread_K.h5 (as SMAC's presets do)
AGENT_KIND = "ovmse-particle-policy"
AGENT_FORMAT = 1
AGENT_FILE = "agent.pt"
REQUEST_FILE = "request.json"  # what a pretrain's --out was asked for (a rerun must ask the same)
SWEEP_FILE = "particle_sweep.json"  # the same for a reproduce's --out

# The particle trials' budget flags: (flag, OfflineBudget field, type, help, OfflineBudget's default,
# written out so that building the parser imports no torch; a test holds them to the dataclass).
# --batch-size is one too (reproduce already has it for SMAC; its meaning follows the map).
BUDGET_FLAGS = (
    ("--behaviour-steps", "behaviour_steps", int, "OMSD's diffusion-model updates", 20_000),
    ("--critic-steps", "critic_steps", int, "OMSD's critic (IQL) updates", 20_000),
    ("--actor-steps", "actor_steps", int, "actor updates (every method)", 10_000),
    ("--eval-interval", "eval_interval", int, "actor updates between evaluations", 2_000),
    ("--eval-episodes", "eval_episodes", int, "episodes per evaluation", 64),
    ("--final-episodes", "final_episodes", int, "episodes of the final policy", 640),
)
BATCH_FLAG = ("--batch-size", "batch_size", int, "transitions per update", 512)
BETA_FLAG = ("--beta", "beta", float, "OMSD's regulariser weight (OMSDConfig's)", 0.01)


def is_particle_map(name: str | None) -> bool:
    return name in PARTICLE_MAPS


def is_particle_agent(path: str | os.PathLike) -> bool:
    """Whether `path` is a policy `ovmse pretrain --map simple_spread` saved. Reads only the small
    pickle of torch's zip, not the tensors, so any checkpoint is cheap to ask about."""
    path = Path(path)
    if path.is_dir():
        path = path / AGENT_FILE
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            return name is not None and AGENT_KIND.encode() in archive.read(name)
    except (OSError, zipfile.BadZipFile):
        return False


def add_budget_options(parser: argparse.ArgumentParser, batch_size: bool) -> None:
    """The particle trials' budget flags (default: OfflineBudget's), in a group of their own."""
    group = parser.add_argument_group("particle worlds (--map simple_spread)")
    flags = [*BUDGET_FLAGS, BETA_FLAG]
    if batch_size:
        flags.insert(3, BATCH_FLAG)
    for flag, name, kind, text, default in flags:
        group.add_argument(
            flag,
            dest=name,
            type=_positive(kind),
            default=None,
            metavar="X",
            help=f"{text} (default: {default:,})",
        )


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (kind is int and value < 1) or (kind is float and not value >= 0):
            raise argparse.ArgumentTypeError(f"must be {'at least 1' if kind is int else '>= 0'}, got {text}")
        return value

    return parse


# --- which path a command takes ------------------------------------------------------------------

# The options only the particle path reads, per command: (flag, attribute). On a SMAC map they are
# refused naming the flag.
_PRETRAIN_ONLY = tuple((flag, name) for flag, name, *_ in (*BUDGET_FLAGS, BATCH_FLAG, BETA_FLAG))
ROUTE_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "pretrain": (("--out", "out"), *_PRETRAIN_ONLY),
    "evaluate": (),
    "reproduce": tuple(f for f in _PRETRAIN_ONLY if f[0] != "--batch-size"),
}


def takes_particle_path(
    args: argparse.Namespace,
    methods: Sequence[str],
    smac_methods: Sequence[str],
    particle_only_flags: Sequence[tuple[str, str]],
) -> bool:
    """True when the command runs on a particle world (its --map names one). On a SMAC map (given or
    the default, 3s5z) a particle-world method or option is refused in one line naming --map or the
    option; a SMAC method on a particle world is refused later, naming --method(s)."""
    if is_particle_map(getattr(args, "map", None)):
        return True
    unknown = [m for m in methods if m and m not in smac_methods]
    if unknown:
        from learner.continuous_registry import CONTINUOUS_METHODS

        for method in unknown:
            if method in CONTINUOUS_METHODS:
                where = f"--map {args.map}" if getattr(args, "map", None) else "--map (default 3s5z)"
                raise InputError(
                    f"{where}: {method} is a particle-world method; add --map {PARTICLE_MAPS[0]} "
                    f"(particle worlds: {', '.join(PARTICLE_MAPS)})"
                )
    for flag, name in particle_only_flags:
        if getattr(args, name, None) is not None:
            raise InputError(f"{flag}: a particle-world option; it needs --map {PARTICLE_MAPS[0]}")
    return False


def refuse_flags(args: argparse.Namespace, flags: Sequence[tuple[str, str]], why: str) -> None:
    for flag, name in flags:
        value = getattr(args, name, None)
        if value not in (None, [], ()):
            raise InputError(f"{flag}: {why}")


def method_named(name: str, flag: str):
    """The registry's method; a SMAC method named on a particle world is refused naming `flag`."""
    from learner.continuous_registry import CONTINUOUS_METHOD_NAMES, continuous_method

    if name not in CONTINUOUS_METHOD_NAMES:
        raise InputError(
            f"{flag}: {name!r} is not a method for {PARTICLE_MAPS[0]} (a SMAC method? they run on SMAC "
            f"maps); on particle worlds: {', '.join(CONTINUOUS_METHOD_NAMES)}"
        )
    return continuous_method(name, flag)


# --- datasets ----------------------------------------------------------------------------------------


def dataset_file(map_name: str, kind: str) -> Path:
    return DATA_DIR / f"{map_name}_{kind}.h5"


def resolve_dataset(args: argparse.Namespace, map_name: str) -> tuple[Path, dict]:
    """--dataset FILE, else the file --dataset-kind names (data/MAP_KIND.h5), and its card; a missing
    file is one line naming the flag, the path and how to make it."""
    kind = args.dataset_kind
    if kind is not None and kind not in DATASET_KINDS:
        raise InputError(f"--dataset-kind: {kind!r} is not one of {', '.join(DATASET_KINDS)} on {map_name}")
    if args.dataset:
        path = Path(args.dataset)
        if not path.is_file():
            raise InputError(f"--dataset {path}: no such file")
    else:
        kind = kind or "medium"
        path = dataset_file(map_name, kind)
        if not path.is_file():
            raise InputError(
                f"--dataset-kind {kind}: no dataset at {path}; make it with `ovmse dataset particles "
                f"--out {path.parent}` (or give --dataset FILE)"
            )
    card = read_card(path, "--dataset" if args.dataset else f"--dataset-kind {kind}")
    if card.get("map") != map_name:
        raise InputError(
            f"--dataset {path}: the card's map is {card.get('map')!r}, this run is on {map_name}"
        )
    if kind is not None and card.get("kind") != kind:
        raise InputError(f"--dataset-kind {kind}: {path} holds a {card.get('kind')!r} dataset")
    from replay.transition_dataset import score_bounds  # here: `ovmse --help` imports no torch

    score_bounds(card, f"{'--dataset' if args.dataset else f'--dataset-kind {kind}'} {path}")
    return path.resolve(), card


def read_card(path: Path, flag: str) -> dict:
    """A transition dataset's card alone (the arrays are read, and checked, when a trial starts)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "card" not in h5.attrs:
                raise InputError(f"{flag} {path}: not a transition dataset (no card attribute)")
            return json.loads(h5.attrs["card"])
    except OSError as error:
        raise InputError(f"{flag} {path}: not an HDF5 file ({str(error).splitlines()[0]})") from None
    except json.JSONDecodeError:
        raise InputError(f"{flag} {path}: card: not JSON") from None


# `ovmse dataset particles`'s flags: ParticleDatasetConfig's fields with their defaults, written out so
# that building the parser imports no torch (a test holds them to the dataclass).
DATASET_FLAGS: dict[str, tuple[type, int | float, str]] = {
    "env_steps": (int, 1_000_000, "MATD3's online env steps"),
    "transitions": (int, 1_000_000, "transitions per dataset"),
    "eval_interval": (int, 50_000, "env steps between MATD3's snapshots"),
    "score_episodes": (int, 1_000, "episodes of the random and expert returns"),
    "behaviour_noise": (float, 0.1, "the expert's and medium's acting noise, unit scale"),
    "num_envs": (int, 256, "episodes stepped together"),
    "warmup": (int, 10_000, "random-action steps before MATD3's first update"),
    "batch_size": (int, 1024, "MATD3's batch"),
    "seed": (int, 0, "seed"),
    "mixed_experts": (int, 3, "the mixed dataset's experts: the expert under 2-3 landmark rotations"),
}


def dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory for the five datasets (required)"
    )
    for name, (kind, default, text) in DATASET_FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_positive(kind) if name != "seed" else int,
            default=default,
            metavar="X",
            help=f"{text} (default: {default:,})",
        )


def make_particle_datasets(args: argparse.Namespace) -> int:
    """`ovmse dataset particles --out DIR`: simple_spread's five datasets, made the way OMAR made its
    own (resumable: finished files are kept)."""
    import torch

    from deploy.studies.particle_datasets import ParticleDatasetConfig, make_datasets

    cfg = ParticleDatasetConfig(**{name: getattr(args, name) for name in DATASET_FLAGS})
    if cfg.eval_interval >= cfg.env_steps:
        raise InputError(
            f"--eval-interval {cfg.eval_interval}: must be under --env-steps {cfg.env_steps} (the medium "
            "dataset needs a snapshot other than the expert's)"
        )
    torch.set_num_threads(_threads())
    started = time.perf_counter()
    summary = make_datasets(Path(args.out), cfg, say)
    print(
        f"datasets in {args.out} ({time.perf_counter() - started:.0f} s): random return "
        f"{summary['random_return']:.2f}, expert return {summary['expert_return']:.2f}, medium score "
        f"{summary['medium_score']:.1f}"
    )
    return 0


# --- pretrain -----------------------------------------------------------------------------------------


def say(line: str) -> None:
    print(line, flush=True)


def _threads() -> int:
    """Torch threads of a trial, its evaluation and `evaluate` alike (1 unless OMP_NUM_THREADS says),
    so a saved policy scores the same actions as its trial did."""
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def budget_from_args(args: argparse.Namespace):
    from deploy.studies.particle_offline import OfflineBudget

    given = {name: getattr(args, name, None) for _, name, _, _, _ in BUDGET_FLAGS}
    given["batch_size"] = getattr(args, "batch_size", None)
    budget = dataclasses.replace(OfflineBudget(), **{k: v for k, v in given.items() if v is not None})
    if budget.eval_interval > budget.actor_steps:
        raise InputError(
            f"--eval-interval {budget.eval_interval}: more than --actor-steps {budget.actor_steps} "
            "(a trial evaluates every --eval-interval actor steps)"
        )
    return budget


def omsd_config_from_args(args: argparse.Namespace):
    from learner.omsd_learner import OMSDConfig

    beta = getattr(args, "beta", None)
    return OMSDConfig() if beta is None else OMSDConfig(beta=beta)


SMAC_CONFIG_FLAGS = (("--config", "config"), ("--set", "overrides"))


def pretrain(args: argparse.Namespace) -> int:
    """`ovmse pretrain --map simple_spread`: one offline trial into --out, then its saved policy."""
    import torch

    from deploy.studies.particle_offline import OfflineTrial, run_trial

    refuse_flags(args, SMAC_CONFIG_FLAGS, f"{args.map} takes no configuration file; its options are flags")
    method = method_named(args.method or "omsd", "--method")
    for flag, name, _, _, _ in BUDGET_FLAGS[:2]:  # behaviour and critic steps: OMSD's phases
        if getattr(args, name, None) is not None and name.removesuffix("_steps") not in method.phases:
            raise InputError(
                f"{flag}: {method.name} has no such phase (its phases: {', '.join(method.phases)})"
            )
    if getattr(args, "beta", None) is not None and method.config_class.__name__ != "OMSDConfig":
        raise InputError(f"--beta: OMSD's regulariser weight; {method.name} has none")
    path, card = resolve_dataset(args, args.map)
    seed = args.seed if args.seed is not None else 0
    budget = budget_from_args(args)
    trial = OfflineTrial(str(path), method.name, seed, budget, omsd_config_from_args(args))
    out = Path(args.out or Path("runs") / "pretrain" / f"{method.name}_{args.map}_{card['kind']}_s{seed}")
    request = {
        "map": args.map,
        "method": method.name,
        "dataset": str(path),
        "seed": seed,
        "budget": dataclasses.asdict(budget),
        "config": dataclasses.asdict(trial.method_config()),
    }
    same_request(out, REQUEST_FILE, request, "a pretrain")
    torch.set_num_threads(_threads())
    say(
        f"pretrain {method.name} on {path.name} ({card['kind']}, {card['transitions']:,} transitions), "
        f"seed {seed}, into {out}"
    )
    result = run_trial(trial, out, say)
    identity = {
        "map": args.map,
        "method": method.name,
        "shape": method.policy_shape(_shape(card), trial.method_config()),
        "dataset": path.name,
        "dataset_kind": card["kind"],
        "random_return": float(card["random_return"]),
        "expert_return": float(card["expert_return"]),
        "seed": seed,
    }
    _write_agent(out / AGENT_FILE, identity, torch.load(out / "policy.pt", weights_only=True))
    say(
        f"done: {method.name} final score {result['final_score']:.1f} ± {result['final_score_ci95']:.1f} "
        f"(return {result['final_return']:.2f}, {result['final_episodes']} episodes; 0 = random, "
        f"100 = expert); policy in {out / AGENT_FILE}"
    )
    return 0


def _shape(card: dict):
    from learner.continuous_registry import DatasetShape

    return DatasetShape.from_card(card)


def same_request(out: Path, name: str, request: dict, what: str) -> None:
    """--out holds what this command asked for, or nothing yet: a rerun goes on (a trial from its
    state.pt); a different request there is refused rather than mixed in."""
    from common.atomic_files import write_json

    path = out / name
    if path.is_file():
        held = json.loads(path.read_text())
        if held != request:
            differ = sorted(k for k in set(held) | set(request) if held.get(k) != request.get(k))
            raise InputError(
                f"--out {out}: holds {what} with other settings ({', '.join(differ)} differ); "
                "give another --out, or the same settings to continue it"
            )
    else:
        write_json(path, request)


def _write_agent(path: Path, identity: dict, weights: dict) -> None:
    import torch

    from common.atomic_files import atomic_path

    payload = {"format": AGENT_FORMAT, "kind": AGENT_KIND, "identity": identity, "weights": weights}
    with atomic_path(path) as tmp:  # tensors and plain values: loads with weights_only=True
        torch.save(payload, tmp)


def read_agent(path: Path) -> tuple[dict, dict]:
    """(identity, weights) of a saved particle policy; anything else is one line naming the file."""
    import pickle

    import torch

    if path.is_dir():
        path = path / AGENT_FILE
    if not path.is_file():
        raise InputError(f"--checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"--checkpoint {path}: not a saved policy ({first})") from None
    if not isinstance(payload, dict) or payload.get("kind") != AGENT_KIND:
        raise InputError(
            f"--checkpoint {path}: not a particle-world policy (`ovmse pretrain --map simple_spread` "
            "writes OUT/agent.pt)"
        )
    if payload.get("format") != AGENT_FORMAT:
        raise InputError(
            f"--checkpoint {path}: format {payload.get('format')!r}, this version reads {AGENT_FORMAT}"
        )
    missing = [
        k
        for k in ("map", "method", "shape", "random_return", "expert_return", "seed")
        if k not in payload["identity"]
    ]
    if missing:
        raise InputError(f"--checkpoint {path}: identity: missing key(s) {', '.join(missing)}")
    return payload["identity"], payload["weights"]


# --- evaluate ---------------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    """`ovmse evaluate --checkpoint OUT/agent.pt`: the saved policy's greedy episodes on its world:
    mean return and normalised score with 95% intervals."""
    import numpy as np
    import torch

    from deploy.continuous_training import evaluate_returns
    from deploy.studies.particle_datasets import normalised_score
    from deploy.studies.particle_offline import OfflineBudget, _eval_env

    if args.method is not None:
        method_named(args.method, "--method")
    if not args.checkpoint:
        raise InputError(
            f"--checkpoint: evaluating on {args.map} needs a saved policy (`ovmse pretrain --map "
            f"{args.map or PARTICLE_MAPS[0]}` writes OUT/{AGENT_FILE})"
        )
    refuse_flags(
        args,
        [*SMAC_CONFIG_FLAGS, ("--dataset-kind", "dataset_kind")],
        "a saved particle policy records its own (drop it)",
    )
    identity, weights = read_agent(Path(args.checkpoint))
    if args.map is not None and args.map != identity["map"]:
        raise InputError(f"--map {args.map}: {args.checkpoint} is a policy for {identity['map']}")
    if args.method is not None and args.method != identity["method"]:
        raise InputError(f"--method {args.method}: {args.checkpoint} is a {identity['method']} policy")
    method = method_named(identity["method"], "--checkpoint's method")
    try:
        act = method.load_policy(identity["shape"], weights)
    except (RuntimeError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(
            f"--checkpoint {args.checkpoint}: its weights do not fit its shape ({first})"
        ) from None
    episodes = args.episodes or OfflineBudget().final_episodes
    seed = args.seed if args.seed is not None else int(identity["seed"])
    torch.set_num_threads(_threads())
    started = time.perf_counter()
    returns = evaluate_returns(act, _eval_env(seed), episodes)
    mean = float(returns.mean())
    half = 1.96 * float(returns.std(ddof=1)) / np.sqrt(episodes) if episodes > 1 else float("nan")
    low, high = identity["random_return"], identity["expert_return"]
    score = normalised_score(mean, low, high)
    score_half = 100.0 * half / (high - low)
    print(
        f"{identity['method']} on {identity['map']} ({identity.get('dataset', '?')}), {episodes} episodes "
        f"(evaluation seed {seed}, {time.perf_counter() - started:.1f} s): "
        f"mean return {mean:.2f} ± {half:.2f}, "
        f"normalised score {score:.1f} ± {score_half:.1f} (95% intervals; 0 = random {low:.2f}, "
        f"100 = expert {high:.2f})"
    )
    print(
        json.dumps(
            {
                "method": identity["method"],
                "map": identity["map"],
                "episodes": episodes,
                "seed": seed,
                "return": mean,
                "return_ci95": half,
                "score": score,
                "score_ci95": score_half,
            }
        )
    )
    return 0
