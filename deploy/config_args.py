"""The options every job that takes a configuration shares, and the configuration they resolve to:
defaults -> preset (--map, --dataset-kind, --method) -> --config FILE -> OVMSE__section__key
environment variables -> --seed -> --set.

Also the argparse types of the commands' numeric options (`positive_int`, `non_negative_int`,
`probability`): a bad value is refused while the command line is read, in one line naming the flag,
so that no count ever falls back to a default because it was zero.
"""

from __future__ import annotations

import argparse
import os

from common.config import METHOD_NAMES, Config, resolve_config

ENV_PREFIX = "OVMSE__"


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type for counts (episodes, seeds, threads, jobs, updates, ...): 1 or more."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type for indices and seeds: 0 or more."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def probability(text: str) -> float:
    """An argparse type for a probability: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def env_overrides(environ=None) -> list[str]:
    """`OVMSE__section__key=value` environment variables as `section.key=value` overrides (how
    docker compose configures a service), sorted so the result does not depend on the env order."""
    environ = os.environ if environ is None else environ
    out = []
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            out.append(f"{name[len(ENV_PREFIX) :].replace('__', '.')}={value}")
    return out


def seed_overrides(seed: int | None) -> list[str]:
    """What `--seed N` sets: the learner's and the exploration's seed (run.seed) and the battles'
    (env.seed), the same number, as `ovmse reproduce` seeds each trial."""
    return [] if seed is None else [f"run.seed={seed}", f"env.seed={seed}"]


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved configuration from the common options (--map, --dataset-kind, --method,
    --config, --seed, --set) and OVMSE__section__key environment variables (below --seed and --set,
    above the file)."""
    return resolve_config(
        map_name=args.map,
        dataset=args.dataset_kind,
        method=args.method,
        file=args.config,
        overrides=[
            *env_overrides(),
            *seed_overrides(getattr(args, "seed", None)),
            *(args.overrides or ()),
        ],
    )


def add_config_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """The options of every job that takes a configuration; `seed=False` leaves out `--seed` (for
    a command that runs several seeds itself)."""
    group = parser.add_argument_group(
        "configuration (defaults -> preset -> --config FILE -> --seed -> --set)"
    )
    group.add_argument(
        "--map",
        metavar="MAP",
        help="SMAC map or SMACv2 scenario (e.g. protoss_5_vs_5); the paper's presets: 2s3z, 3s5z, "
        "5m_vs_6m, 6h_vs_8z; other maps get generic values (default: 3s5z)",
    )
    group.add_argument(
        "--dataset-kind",
        metavar="KIND",
        help="offline dataset: medium | medium_replay (default: medium; qmix uses none)",
    )
    group.add_argument("--method", metavar="METHOD", help=f"{' | '.join(METHOD_NAMES)} (default: ovmse)")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or TOML file with sections env, replay, learner, actor, run (default: none)",
    )
    if seed:
        group.add_argument(
            "--seed",
            type=non_negative_int,
            metavar="N",
            help="seed of the run: sets run.seed (learner, exploration, batches) and env.seed (battles) "
            "to N (default: run.seed and env.seed as configured, 0)",
        )
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set learner.lr=5e-4 (repeatable)",
    )
    group.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit"
    )
