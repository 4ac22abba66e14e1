"""The `ovmse` command: one subcommand per job.

`COMMANDS` is the whole dispatch: subcommand -> help, its options, its handler. Handlers import
their implementation inside the function, so `ovmse --help` stays fast and imports neither torch
nor TensorFlow. The longer handlers live beside it: training_commands.py (train, pretrain),
checkpoint_commands.py (evaluate --checkpoint, export), replay_commands.py (replay-server, dataset).

Exit codes: 0 done; 1 a run that stopped on purpose (RunHalted); 2 bad usage or a configuration or
input error (one line on stderr naming the flag, field or file, no traceback); 130 / 143 stopped by
SIGINT / SIGTERM after cleaning up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, format_config
from common.errors import InputError, RunHalted
from common.lifecycle import Terminated, run_until_signal
from deploy import private_network, replay_commands
from deploy.config_args import (
    add_config_options,
    config_from_args,
    env_overrides,
    non_negative_int,
    positive_int,
)

__all__ = ["COMMANDS", "build_parser", "config_from_args", "env_overrides", "main"]


# --- handlers ----------------------------------------------------------------------------------
# A job that takes a configuration resolves it first, so that a bad configuration is reported
# before anything starts.


def _lazy(target: str) -> Callable:
    """A command's handler (or options) `module:function`, imported when it is called, so that
    `ovmse --help` imports no torch."""
    module, name = target.split(":")

    def call(arg):
        import importlib

        return getattr(importlib.import_module(module), name)(arg)

    return call


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        given = {
            "--map": args.map,
            "--dataset-kind": args.dataset_kind,
            "--method": args.method,
            "--config": args.config,
            "--seed": getattr(args, "seed", None),
        }
        refused = [flag for flag, value in given.items() if value is not None]
        if refused:
            raise InputError(
                f"{refused[0]}: --resume RUN_DIR takes the run's own config.yaml; drop it (--set may "
                "change the budget and how the run reports, e.g. --set run.online_env_steps=N)"
            )
        _enter_private_network_if_asked(args, _saved_private_network(Path(args.resume)))
        from deploy.embedded import resume_embedded

        try:
            return resume_embedded(args.resume, list(args.overrides or ()))
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            return 2
    cfg = config_from_args(args)
    _enter_private_network_if_asked(args, cfg.run.private_network)
    from deploy.embedded import run_embedded

    return run_embedded(cfg)


def _enter_private_network_if_asked(args: argparse.Namespace, asked: bool) -> None:
    """With run.private_network, the same command again inside a network namespace of its own
    (this process is replaced: the call does not return); a one-line error where none can be made."""
    if not asked or private_network.inside():
        return
    try:
        private_network.reexec_inside(["-m", "deploy.cli", *args.argv])
    except RuntimeError as error:
        raise InputError(str(error)) from None


def _saved_private_network(run_dir: Path) -> bool:
    """run.private_network of a run's own config.yaml (False if it cannot be read: the resume
    itself then says what is wrong)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        return bool(saved["run"].get("private_network", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return False


def _run_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped, crashed or finished run where it stopped (its config, checkpoints, "
        "logs); with --set, a larger run.online_env_steps (or a new evaluation or log interval)",
    )


def _particle_path(args: argparse.Namespace, methods: list[str], command: str) -> bool:
    """The command runs on a particle world (deploy/studies/particle_commands.py); SMAC maps keep
    their path, and a method or option of the other kind is refused naming it."""
    from common.config import METHOD_NAMES
    from deploy.studies.particle_commands import ROUTE_FLAGS, takes_particle_path

    return takes_particle_path(args, methods, METHOD_NAMES, ROUTE_FLAGS[command])


def _pretrain(args: argparse.Namespace) -> int:
    if _particle_path(args, [args.method or ""], "pretrain"):
        from deploy.studies.particle_commands import pretrain as particle_pretrain

        return particle_pretrain(args)
    from deploy.training_commands import pretrain

    return pretrain(args)


def _learner(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from deploy.roles import learner_role

    summary = run_until_signal(lambda stop: learner_role(cfg, stop))
    print(
        f"learner: {summary['updates']} updates, version {summary['version']}, "
        f"{summary['env_steps']} env steps{' (budget reached)' if summary['finished'] else ''}"
    )
    return 0


ACTOR_STOP_S = 5.0  # an actor stuck on the replay's insert throttle exits this long after SIGTERM


def _actor(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from actors.process import resolve_actor_id
    from deploy.roles import acting_threads, actor_role

    acting_threads()
    actor_id = resolve_actor_id(args.actor_id)
    summary = run_until_signal(lambda stop: actor_role(cfg, actor_id, stop), stop_within_s=ACTOR_STOP_S)
    print(f"actor {actor_id}: {summary['env_steps']} env steps, {summary['episodes']} episodes")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from deploy.studies.particle_commands import is_particle_agent

    saved_particle_policy = args.map is None and args.checkpoint and is_particle_agent(args.checkpoint)
    if saved_particle_policy or _particle_path(args, [args.method or ""], "evaluate"):
        from deploy.studies.particle_commands import evaluate

        return evaluate(args)
    if args.checkpoint:
        from deploy.checkpoint_commands import evaluate_checkpoint

        return evaluate_checkpoint(args)
    cfg = config_from_args(args)
    from deploy.roles import acting_threads, evaluator_role

    acting_threads()
    summary = run_until_signal(lambda stop: evaluator_role(cfg, stop))
    print(f"evaluator: first test win rate {summary['first_win_rate']}, final {summary['final_win_rate']}")
    return 0


def _check_methods(text: str) -> None:
    """An unknown name in --methods, with the closest known method, before the sweep starts."""
    from common.config import METHOD_NAMES
    from common.config.problems import suggest

    for method in (m.strip() for m in text.split(",")):
        if method and method not in METHOD_NAMES:
            raise InputError(
                f"--methods: unknown method {method!r}{suggest(method, METHOD_NAMES)}; "
                f"expected some of {', '.join(METHOD_NAMES)}"
            )


def _reproduce(args: argparse.Namespace) -> int:
    methods_given = args.methods != args.command_parser.get_default("methods")
    methods = [m.strip() for m in (args.methods or "").split(",")] if methods_given else []
    if _particle_path(args, methods, "reproduce"):
        from deploy.studies.particle_sweep import reproduce

        return reproduce(args, methods_given)
    if args.methods:
        _check_methods(args.methods)
    from deploy.studies.cli import main
    from deploy.studies.report import write_report

    return main(args, report=write_report)


def _bench(args: argparse.Namespace) -> int:
    from deploy.bench import main

    return int(main(args) or 0)


def _ray_launch(args: argparse.Namespace) -> int:
    from deploy.ray_launch import main

    return main(args)


def _demo(args: argparse.Namespace) -> int:
    from deploy.studies.demo import main

    return main(args)


def _config(args: argparse.Namespace) -> int:
    sys.stdout.write(format_config(config_from_args(args)))
    return 0


# --- options -----------------------------------------------------------------------------------


def _train_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--mode",
        choices=("sync", "distributed"),
        default="sync",
        help="sync: the reference algorithm in one process; distributed: the same as `ovmse run` "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="sync: go on from the trainer state a stopped run saved (RUN_DIR/checkpoints/trainer.pt) "
        "(default: none, a new run)",
    )


def _actor_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--actor-id",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="this actor's index (default: $OVMSE_ACTOR_ID, else from the host name)",
    )


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="learner checkpoint, or agent file (`ovmse export`), to evaluate; its map, method and "
        "run's config.yaml apply unless given (default: none, evaluate the live learner's weights)",
    )
    parser.add_argument(
        "--episodes", type=positive_int, metavar="N", help="test episodes (default: actor.test_episodes)"
    )


def _export_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="learner checkpoint (RUN/checkpoints/X.pt)"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="where the agent file goes (e.g. agent.pt)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _pretrain_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--dataset",
        metavar="PATH",
        help="HDF5 dataset or vault to pre-train on (sets run.dataset; default: run.dataset as configured; "
        "simple_spread: the file --dataset-kind names, data/simple_spread_KIND.h5)",
    )
    from deploy.studies.particle_commands import add_budget_options

    parser.add_argument(
        "--out",
        metavar="DIR",
        help="simple_spread: the trial's directory; its agent.pt is the saved policy "
        "(default runs/pretrain/METHOD_MAP_KIND_sSEED)",
    )
    add_budget_options(parser, batch_size=True)


def _reproduce_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, seed=False)  # --seeds N: the trials' seeds are 0 .. N-1
    from deploy.studies.cli import add_options
    from deploy.studies.particle_commands import add_budget_options

    add_options(parser)
    add_budget_options(parser, batch_size=False)  # --batch-size: add_options's, read per the map


def _bench_options(parser: argparse.ArgumentParser) -> None:
    from deploy.bench import available

    parser.add_argument(
        "name",
        help=f"what to measure: {', '.join(available())} or all (every one); omsd: one OMSD diffusion, "
        "critic and actor update on simple_spread at batch 512, one core",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")


def _ray_launch_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--address", metavar="ADDRESS", help="Ray cluster address (default: start Ray locally)"
    )


@dataclass(frozen=True)
class Command:
    help: str
    handler: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = add_config_options


# The dispatch table. "dataset validate" is the subcommand `validate` of the group `dataset`.
COMMANDS: dict[str, Command] = {
    "run": Command("run everything on this machine: replay, learner, actors, evaluator", _run, _run_options),
    "train": Command("train one method on one task", _lazy("deploy.training_commands:train"), _train_options),
    "pretrain": Command(
        "offline phase only: CQL pre-training on the dataset (simple_spread: one offline method, "
        "saved as a policy)",
        _pretrain,
        _pretrain_options,
    ),
    "replay-server": Command(
        "serve the offline and online replay tables", _lazy("deploy.replay_commands:replay_server")
    ),
    "learner": Command("sample mixed batches, update the networks, publish weights", _learner),
    "actor": Command(
        "play battles with the newest weights and send episodes to replay", _actor, _actor_options
    ),
    "evaluate": Command(
        "greedy test episodes of a checkpoint or of the live learner", _evaluate, _evaluate_options
    ),
    "export": Command(
        "write a checkpoint's acting network alone (a small agent file)",
        _lazy("deploy.checkpoint_commands:export"),
        _export_options,
    ),
    "dataset validate": Command(
        "check a dataset file against the episode schema",
        _lazy("deploy.replay_commands:dataset_validate"),
        replay_commands.validate_options,
    ),
    "dataset inspect": Command(
        "summarise a dataset file: episodes, returns, win rate",
        _lazy("deploy.replay_commands:dataset_inspect"),
        replay_commands.inspect_options,
    ),
    "dataset collect": Command(
        "play battles with a policy and write a dataset file",
        _lazy("deploy.replay_commands:dataset_collect"),
        replay_commands.collect_options,
    ),
    "dataset convert": Command(
        "convert between an HDF5 dataset file and a Flashbax vault (OG-MARL)",
        _lazy("deploy.replay_commands:dataset_convert"),
        replay_commands.convert_options,
    ),
    "dataset particles": Command(
        "make simple_spread's offline datasets (expert, medium, medium_replay, random)",
        _lazy("deploy.studies.particle_commands:make_particle_datasets"),
        _lazy("deploy.studies.particle_commands:dataset_options"),
    ),
    "reproduce": Command(
        "the paper's comparison: every method, several seeds", _reproduce, _reproduce_options
    ),
    "bench": Command("measure one part's speed", _bench, _bench_options),
    "ray-launch": Command("place the same components on a Ray cluster", _ray_launch, _ray_launch_options),
    "demo": Command("a short end-to-end run on the lite world", _demo),
    "config": Command("print the resolved configuration as YAML", _config),
}


def package_version() -> str:
    """The installed package's version, else (a source tree that was not installed) pyproject's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ovmse")
    except PackageNotFoundError:
        import re

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        text = pyproject.read_text() if pyproject.is_file() else ""
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
        return found[1] if found else "unknown"


class _Parser(argparse.ArgumentParser):
    """A bad command line is reported like every other error: one line naming the option, exit 2.
    Options are not abbreviated: `reproduce --seed 3` would otherwise be `--seeds 3`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ovmse",
        description="Distributed offline-to-online multi-agent RL: OVMSE on QMIX.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group:
            if group not in groups:
                group_parser = commands.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True
                )
            sub = groups[group].add_parser(leaf, help=command.help, description=command.help)
        else:
            sub = commands.add_parser(leaf, help=command.help, description=command.help)
        command.options(sub)
        sub.set_defaults(handler=command.handler, command=name, command_parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = build_parser().parse_known_args(argv)
    args.argv = argv  # as given, for a job that starts itself again (run.private_network)
    if unknown:  # named by the subcommand that was given them
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "print_config", False) and _on_a_particle_world(args):
            raise InputError(
                f"--print-config: {args.map} runs take no configuration; their options are flags"
            )
        if getattr(args, "print_config", False) and args.command != "demo":  # the demo prints its own
            sys.stdout.write(format_config(config_from_args(args)))
            return 0
        return args.handler(args)
    except ConfigError as error:
        return _said(str(error), error, 2)
    except InputError as error:  # a bad file or flag: one line naming it, no traceback
        return _said(f"ovmse {args.command}: {error}", error, 2)
    except RunHalted as error:  # e.g. non-finite weights: stopped on purpose, said in one line
        return _said(f"ovmse {args.command}: {error}", error, 1)
    except Terminated as error:  # SIGTERM, after the job cleaned up
        return _said(None, error, 143)
    except KeyboardInterrupt as error:
        return _said(None, error, 130)


def _on_a_particle_world(args: argparse.Namespace) -> bool:
    from deploy.studies.particle_commands import is_particle_map

    return is_particle_map(getattr(args, "map", None))


def _said(line: str | None, error: BaseException, code: int) -> int:
    """Print the error's line (the cause), then what was done about it (its notes); return `code`."""
    for text in ([line] if line else []) + list(getattr(error, "__notes__", ())):
        print(text, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
