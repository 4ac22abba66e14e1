"""`ovmse reproduce`: the paper's comparison on one task, every method over several seeds.

    ovmse reproduce --map 2s3z --dataset-kind medium --methods ovmse,switch_cql,macql,macal_ql,qmix \
        --seeds 5 --online-steps 100000 [--mixing-ratios 0.0,0.1,0.3] [--jobs 2 | --ray ADDRESS] [--out DIR]

The sweep is a small graph of trials (`deploy/studies/sweep.py`), each a directory under the output
directory, finished when it holds `done.json` (written last, atomically). Rerunning the same command
skips finished trials; an online trial stopped part-way goes on from its trainer state (saved after
an evaluation every `run.trainer_checkpoint_interval_s`, 300 s), any other unfinished trial starts
again. Trials run as local processes, `--jobs` at a time, or
as Ray tasks (`--ray ADDRESS`, `--ray local` for an instance on this machine); a Ray task writes into
the output directory, which every node must see at the same path (shared storage). After each online
trial and pre-training the results are written: results.json (marl-eval's raw format), table.md and
curves_*.png (deploy/studies/report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from common.config import METHOD_NAMES
from common.config.presets import map_hyperparameters
from deploy.config_args import positive_int
from deploy.studies.adopt import adopt_pretrainings, check_sources
from deploy.studies.pools import LocalPool, RayPool, sweep_lock
from deploy.studies.runner import run_sweep
from deploy.studies.sweep import (
    DEFAULT_METHODS,
    SWEEP_FILE,
    Budget,
    ReproduceError,
    Sweep,
    load_sweep,
    plan,
    store_sweep,
    trial_config,
)
from deploy.studies.trials import trial_args


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise ReproduceError("--methods: give at least one method")
    for method in methods:
        if method not in METHOD_NAMES:
            raise ReproduceError(
                f"--methods: unknown method {method!r} (expected some of {', '.join(METHOD_NAMES)})"
            )
    if len(set(methods)) != len(methods):
        raise ReproduceError(f"--methods: a method is listed twice in {text!r}")
    return methods


def parse_ratios(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        ratios = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise ReproduceError(f"--mixing-ratios: expected numbers separated by commas, got {text!r}") from None
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ReproduceError(f"--mixing-ratios: each must be in [0, 1], got {text!r}")
    return ratios


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    if getattr(args, "method", None):
        raise ReproduceError(f"--method {args.method}: reproduce runs several; name them with --methods")
    if getattr(args, "config", None):
        raise ReproduceError(
            "--config: reproduce builds each trial from its preset; change fields with --set"
        )
    map_name = args.map or "3s5z"
    kind = args.dataset_kind or "medium"
    if kind not in ("medium", "medium_replay"):
        raise ReproduceError(f"--dataset-kind: expected medium or medium_replay, got {kind!r}")
    if args.seeds < 1:
        raise ReproduceError(f"--seeds must be at least 1, got {args.seeds}")
    online = (
        args.online_steps if args.online_steps is not None else map_hyperparameters(map_name).online_env_steps
    )
    if online < 1:
        raise ReproduceError(f"--online-steps must be at least 1, got {online}")
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be at least 1, got {args.jobs}")
    if args.dataset and not Path(args.dataset).is_file():
        raise ReproduceError(f"--dataset {args.dataset}: no such file")
    budget = Budget()
    changes = {k: v for k, v in (args.budget or {}).items() if v is not None}
    for name, value in changes.items():
        if (
            isinstance(value, int | float)
            and value <= 0
            and name not in ("behaviour_win_rate", "behaviour_return")
        ):
            raise ReproduceError(f"--{name.replace('_', '-')} must be positive, got {value}")
    budget = dataclasses.replace(budget, **changes)
    sweep = Sweep(
        map_name=map_name,
        dataset_kind=kind,
        methods=parse_methods(args.methods),
        seeds=args.seeds,
        online_steps=online,
        mixing_ratios=parse_ratios(args.mixing_ratios),
        dataset=str(Path(args.dataset).resolve()) if args.dataset else None,
        overrides=tuple(args.overrides or ()),
        budget=budget,
    )
    # Resolve every trial's configuration now, so a bad --set fails before anything runs.
    for trial in plan(sweep):
        trial_config(Path(args.out or "."), sweep, trial)
    return sweep


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "reproduce" / f"{sweep.map_name}_{sweep.dataset_kind}"


# The budget flags: (flag, Budget field, type, help).
BUDGET_FLAGS = (
    ("--behaviour-win-rate", "behaviour_win_rate", float, "test win rate QMIX from scratch is trained to"),
    ("--behaviour-return", "behaviour_return", float, "... or to this test return"),
    ("--behaviour-max-steps", "behaviour_max_steps", int, "env steps at most for that QMIX run"),
    ("--dataset-episodes", "dataset_episodes", int, "medium: greedy episodes; medium-replay: buffer size"),
    ("--offline-updates", "offline_updates", int, "pre-training updates"),
    ("--batch-size", "batch_size", int, "episodes per gradient step"),
    ("--evals", "evals", int, "online evaluations over the budget"),
    ("--test-episodes", "test_episodes", int, "greedy episodes per online evaluation"),
    ("--final-test-episodes", "final_test_episodes", int, "greedy episodes of the final policy"),
    ("--target-win-rate", "target_win_rate", float, "the table's 'env steps to reach' win rate"),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    b = Budget()
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="LIST",
        help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)}; also ovm, se, inspo_ovm; "
        "offline only: inspo, bc, qmix_cql, cfcql)",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=6,
        metavar="N",
        help="seeds per method (default: %(default)s, the paper's)",
    )
    parser.add_argument(
        "--online-steps",
        type=positive_int,
        metavar="T",
        help="online env steps per trial (default: the paper's, 1M on 2s3z and 3s5z)",
    )
    parser.add_argument(
        "--mixing-ratios",
        metavar="LIST",
        help="e.g. 0.0,0.1,0.3: every offline-to-online method at each (default: the preset's ratio)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--jobs",
        type=positive_int,
        default=2,
        metavar="J",
        help="local trials at once (default: %(default)s)",
    )
    where.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run trials as Ray tasks on this cluster ('local': a local instance; default: local processes)",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/reproduce/MAP_KIND)")
    parser.add_argument(
        "--dataset",
        metavar="FILE",
        help="use this dataset instead of making one (default: made the paper's way)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch threads per trial (default: %(default)s)",
    )
    parser.add_argument(
        "--pretrained-from",
        action="append",
        default=[],
        metavar="DIR",
        help="another sweep's directory: its finished pre-trainings with this sweep's settings are "
        "copied here instead of run again (repeatable)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write results.json, table.md and the curves of the sweep in --out from its finished trials",
    )
    for flag, name, kind, text in BUDGET_FLAGS:
        parser.add_argument(
            flag,
            type=positive_int if kind is int else kind,
            default=None,
            metavar="X",
            help=f"{text} (default {getattr(b, name)})",
        )


def main(args: argparse.Namespace, report: Callable[[Path, Sweep], object] | None = None) -> int:
    """The command: `report(out, sweep)` writes the results (deploy/studies/report.py's
    `write_report`, which the CLI passes in) after each online trial and at the end."""
    args.budget = {name: getattr(args, name, None) for _, name, _, _ in BUDGET_FLAGS}
    # SIGTERM ends the sweep like Ctrl-C: its running trials are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if getattr(args, "jobs", None) is None:
        args.jobs = 2
    try:
        if getattr(args, "report_only", False):
            return report_only(args, report)
        sweep = sweep_from_args(args)
        sources = [Path(d).resolve() for d in getattr(args, "pretrained_from", None) or ()]
        check_sources(sources)
        out = Path(args.out) if args.out else default_out(sweep)
        out.mkdir(parents=True, exist_ok=True)
        out = out.resolve()
        with sweep_lock(out):
            store_sweep(out, sweep)
            for line in adopt_pretrainings(out, sweep, sources) if sources else ():
                print(f"reproduce: {line}", flush=True)
            command = functools.partial(trial_args, out, threads=args.threads)
            pool = (
                RayPool(out, args.ray, args.jobs, args.threads, command)
                if args.ray
                else LocalPool(out, args.jobs, command)
            )
            write = (lambda: report(out, sweep)) if report else None
            status = run_sweep(out, plan(sweep), pool, report=write)
    except ReproduceError as error:
        print(f"ovmse reproduce: {error}", file=sys.stderr)
        return 2
    table = out / "table.md"
    if table.exists():
        print(table.read_text())
    print(f"results in {out}: results.json, table.md, curves_*.png")
    return status


def report_only(args: argparse.Namespace, report: Callable[[Path, Sweep], object] | None) -> int:
    """`--report-only`: the results of the sweep in --out from the trials finished so far (another
    sweep may be running there); no trial runs."""
    if not args.out:
        raise ReproduceError("--report-only needs --out DIR, the sweep's directory")
    out = Path(args.out)
    if not (out / SWEEP_FILE).is_file():
        raise ReproduceError(f"--out {out}: no sweep there ({SWEEP_FILE} is missing)")
    if report is not None:
        report(out, load_sweep(out))
    print((out / "table.md").read_text() if (out / "table.md").exists() else "no results yet")
    return 0
