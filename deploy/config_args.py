"""The options every job that takes a configuration shares, and the configuration they resolve to:
defaults -> preset (--map, --dataset-kind, --method) -> --config FILE -> OVMSE__section__key
environment variables -> --set.
"""

from __future__ import annotations

import argparse
import os

from common.config import METHOD_NAMES, Config, resolve_config

ENV_PREFIX = "OVMSE__"


def env_overrides(environ=None) -> list[str]:
    """`OVMSE__section__key=value` environment variables as `section.key=value` overrides (how
    docker compose configures a service), sorted so the result does not depend on the env order."""
    environ = os.environ if environ is None else environ
    out = []
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            out.append(f"{name[len(ENV_PREFIX) :].replace('__', '.')}={value}")
    return out


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved configuration from the common options (--map, --dataset-kind, --method,
    --config, --set) and OVMSE__section__key environment variables (below --set, above the file)."""
    return resolve_config(
        map_name=args.map,
        dataset=args.dataset_kind,
        method=args.method,
        file=args.config,
        overrides=[*env_overrides(), *(args.overrides or ())],
    )


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options of every job that takes a configuration."""
    group = parser.add_argument_group("configuration (defaults -> preset -> --config FILE -> --set)")
    group.add_argument(
        "--map",
        metavar="MAP",
        help="SMAC map; the paper's presets: 2s3z, 3s5z, 5m_vs_6m, 6h_vs_8z; other maps get generic values "
        "(default: 3s5z)",
    )
    group.add_argument(
        "--dataset-kind",
        metavar="KIND",
        help="offline dataset: medium | medium_replay (default: medium; qmix uses none)",
    )
    group.add_argument("--method", metavar="METHOD", help=f"{' | '.join(METHOD_NAMES)} (default: ovmse)")
    group.add_argument(
        "--config", metavar="FILE", help="YAML or TOML file with sections env, replay, learner, actor, run"
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
