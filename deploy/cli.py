"""The `ovmse` command: one subcommand per job.

`COMMANDS` is the whole dispatch: subcommand -> help, its options, its handler. Handlers import
their implementation inside the function, so `ovmse --help` stays fast and imports neither torch
nor TensorFlow. A job whose implementation has not landed says so and exits 2; it never pretends.

Exit codes: 0 done; 2 bad usage, a configuration error (one line on stderr, no traceback) or a job
that is not implemented yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.config import Config, ConfigError, format_config
from common.errors import CheckpointError, InputError, RunHalted
from common.lifecycle import Terminated, run_until_signal
from deploy.config_args import add_config_options, config_from_args, env_overrides

__all__ = ["COMMANDS", "build_parser", "config_from_args", "env_overrides", "main"]


# --- handlers ----------------------------------------------------------------------------------
# A job that takes a configuration resolves it first, so that a bad configuration is reported the
# same way whether or not the job has landed.


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.map or args.dataset_kind or args.method or args.config or args.overrides:
            print("--resume RUN_DIR takes the run's own config.yaml; drop the other options", file=sys.stderr)
            return 2
        from deploy.embedded import resume_embedded

        try:
            return resume_embedded(args.resume)
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            return 2
    cfg = config_from_args(args)
    from deploy.embedded import run_embedded

    return run_embedded(cfg)


def _run_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped or crashed run where it stopped (its config, checkpoints, logs)",
    )


def _train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.mode != "sync" and args.resume:
        raise InputError("--resume: a distributed run resumes with `ovmse run --resume RUN_DIR`")
    if args.mode != "sync":
        from deploy.embedded import run_embedded

        return run_embedded(cfg)
    from deploy.single_process import train_sync

    if args.resume:  # the run's own configuration, and its directory
        from pathlib import Path

        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "trainer.pt").is_file():
            raise InputError(f"--resume {run_dir}: no trainer state there (checkpoints/trainer.pt)")
        if args.config is None and (run_dir / "config.yaml").is_file():
            args.config = str(run_dir / "config.yaml")
            cfg = config_from_args(args)
        result = train_sync(cfg, run_dir=run_dir, resume=True)
    else:
        result = train_sync(cfg)
    print(
        f"done: final test win rate {result.final_win_rate:.3f}, return {result.final_return:.2f} "
        f"({result.updates} updates, {result.online_env_steps} online env steps)"
    )
    print(f"results in {result.run_dir}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    overrides = list(args.overrides or ())
    if args.dataset:
        overrides.insert(0, f"run.dataset={args.dataset}")
    args.overrides = overrides
    cfg = config_from_args(args)
    from deploy.single_process import pretrain

    try:
        pretrain(cfg)
    except ValueError as error:
        print(f"ovmse pretrain: {error}", file=sys.stderr)
        return 2
    return 0


def _replay_server(args: argparse.Namespace) -> int:
    from deploy.replay_commands import replay_server

    return replay_server(args)


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
    cfg = config_from_args(args)
    if args.checkpoint:
        return _evaluate_checkpoint(cfg, args.checkpoint, args.episodes or cfg.actor.test_episodes, args)
    from deploy.roles import acting_threads, evaluator_role

    acting_threads()
    summary = run_until_signal(lambda stop: evaluator_role(cfg, stop))
    print(f"evaluator: first test win rate {summary['first_win_rate']}, final {summary['final_win_rate']}")
    return 0


def _evaluate_checkpoint(cfg: Config, path: str, episodes: int, args: argparse.Namespace) -> int:
    """Greedy episodes of a learner checkpoint, or of an exported agent (`ovmse export`): an agent
    file names its map and method, which apply unless --map or --config says otherwise."""
    from pathlib import Path

    from actors.evaluator import evaluate
    from deploy.builder import Builder
    from learner.agent_file import check_agent_map, read_agent

    if not Path(path).is_file():
        print(f"ovmse evaluate: --checkpoint {path}: no such file", file=sys.stderr)
        return 2
    agent = read_agent(path)  # None: a learner checkpoint
    if agent is not None:
        weights, identity = agent
        if args.map is None and args.config is None and identity.get("map"):
            args.map, args.method = identity["map"], args.method or identity.get("method")
            cfg = config_from_args(args)
        check_agent_map(path, identity, cfg.env.map_name)
        builder = Builder(cfg)
        worker = builder.eval_worker()
        try:
            worker.set_weights(weights, 1)
        except (RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(
                path, f"does not fit the configured acting network: {first[:160]}"
            ) from None
    else:
        builder = Builder(cfg)
        learner = builder.learner(path)
        worker = builder.eval_worker()
        worker.set_weights(learner.agent_state_dict(), 1)
    result = evaluate(worker, episodes)
    print(
        f"{path}: {result.episodes} greedy episodes on {cfg.env.map_name}: "
        f"win rate {result.win_rate:.3f} [{result.win_rate_low:.3f}, {result.win_rate_high:.3f}], "
        f"return {result.mean_return:.2f} ± {result.return_ci:.2f} (95% intervals)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    """The acting network of a learner checkpoint, alone (learner/agent_file.py). The configuration
    is the run's own (config.yaml beside checkpoints/) unless --config or --map is given."""
    from pathlib import Path

    from deploy.builder import Builder
    from learner.agent_file import export_agent

    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if not checkpoint.is_file():
        raise InputError(f"--checkpoint {checkpoint}: no such file")
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out}: exists; give --overwrite to replace it")
    run_config = checkpoint.resolve().parent.parent / "config.yaml"
    if args.config is None and args.map is None and run_config.is_file():
        args.config = str(run_config)
    cfg = config_from_args(args)
    learner = Builder(cfg).learner(checkpoint)
    export_agent(learner, out, cfg.env.map_name)
    print(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): "
        f"the {cfg.learner.method} agent for {cfg.env.map_name}"
    )
    return 0


def _dataset_validate(args: argparse.Namespace) -> int:
    from deploy.replay_commands import dataset_validate

    return dataset_validate(args)


def _dataset_inspect(args: argparse.Namespace) -> int:
    from deploy.replay_commands import dataset_inspect

    return dataset_inspect(args)


def _dataset_collect(args: argparse.Namespace) -> int:
    from deploy.replay_commands import dataset_collect

    return dataset_collect(args)


def _dataset_convert(args: argparse.Namespace) -> int:
    from deploy.replay_commands import dataset_convert

    return dataset_convert(args)


def _reproduce(args: argparse.Namespace) -> int:
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
        help="sync: the reference algorithm in one process; distributed: the same as `ovmse run`",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="sync: go on from the trainer state a stopped run saved (RUN_DIR/checkpoints/trainer.pt)",
    )


def _actor_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--actor-id",
        type=int,
        default=None,
        metavar="N",
        help="this actor's index (default: $OVMSE_ACTOR_ID, else from the host name)",
    )


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="learner checkpoint, or agent file (`ovmse export`), to evaluate"
    )
    parser.add_argument(
        "--episodes", type=int, metavar="N", help="test episodes (default: actor.test_episodes)"
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


def _dataset_path_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="HDF5 dataset file, or a Flashbax vault directory (NAME.vlt/UID)")


def _pretrain_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--dataset", metavar="PATH", help="HDF5 dataset or vault to pre-train on (sets run.dataset)"
    )


def _dataset_validate_options(parser: argparse.ArgumentParser) -> None:
    _dataset_path_options(parser)
    parser.add_argument("--map", metavar="MAP", help="check shapes against this map's sizes")


def _dataset_inspect_options(parser: argparse.ArgumentParser) -> None:
    _dataset_path_options(parser)
    parser.add_argument("--plot", metavar="PNG", help="return histogram (default: FILE.returns.png)")


def _dataset_collect_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--policy",
        default="heuristic",
        metavar="POLICY",
        help="heuristic | random | checkpoint:PATH (a learner checkpoint) | qmix-replay (the buffer of "
        "a from-scratch QMIX run of run.online_env_steps; --episodes = buffer size)",
    )
    parser.add_argument("--epsilon", type=float, metavar="E", help="random-action probability per agent")
    parser.add_argument("--envs", type=int, metavar="N", help="battles stepped together (default 16)")
    parser.add_argument("--episodes", type=int, metavar="N", help="episodes to collect")
    parser.add_argument("--out", metavar="PATH", help="HDF5 file to write (default: run.dataset)")


def _dataset_convert_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="SRC", help="an HDF5 dataset file, or a vault directory NAME.vlt/UID")
    parser.add_argument(
        "--out",
        metavar="DST",
        required=True,
        help="for an HDF5 source the vault to write (NAME.vlt/UID; NAME.vlt alone: UID = the file's "
        "name), for a vault the HDF5 file",
    )
    parser.add_argument("--map", metavar="MAP", help="check shapes against this map's sizes")


def _reproduce_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    from deploy.studies.cli import add_options

    add_options(parser)


def _bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="what to measure, e.g. world, learner, all")
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
    "train": Command("train one method on one task", _train, _train_options),
    "pretrain": Command("offline phase only: CQL pre-training on the dataset", _pretrain, _pretrain_options),
    "replay-server": Command("serve the offline and online replay tables", _replay_server),
    "learner": Command("sample mixed batches, update the networks, publish weights", _learner),
    "actor": Command(
        "play battles with the newest weights and send episodes to replay", _actor, _actor_options
    ),
    "evaluate": Command(
        "greedy test episodes of a checkpoint or of the live learner", _evaluate, _evaluate_options
    ),
    "export": Command(
        "write a checkpoint's acting network alone (a small agent file)", _export, _export_options
    ),
    "dataset validate": Command(
        "check a dataset file against the episode schema", _dataset_validate, _dataset_validate_options
    ),
    "dataset inspect": Command(
        "summarise a dataset file: episodes, returns, win rate", _dataset_inspect, _dataset_inspect_options
    ),
    "dataset collect": Command(
        "play battles with a policy and write a dataset file", _dataset_collect, _dataset_collect_options
    ),
    "dataset convert": Command(
        "convert between an HDF5 dataset file and a Flashbax vault (OG-MARL)",
        _dataset_convert,
        _dataset_convert_options,
    ),
    "reproduce": Command(
        "the paper's comparison: every method, several seeds", _reproduce, _reproduce_options
    ),
    "bench": Command("measure one part's speed", _bench, _bench_options),
    "ray-launch": Command("place the same components on a Ray cluster", _ray_launch, _ray_launch_options),
    "demo": Command("a short end-to-end run on the lite world", _demo),
    "config": Command("print the resolved configuration as YAML", _config),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovmse",
        description="Distributed offline-to-online multi-agent RL: OVMSE on QMIX.",
    )
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
        sub.set_defaults(handler=command.handler, command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "print_config", False):
            sys.stdout.write(format_config(config_from_args(args)))
            return 0
        return args.handler(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except InputError as error:  # a bad file or flag: one line naming it, no traceback
        print(f"ovmse {args.command}: {error}", file=sys.stderr)
        return 2
    except RunHalted as error:  # e.g. non-finite weights: stopped on purpose, said in one line
        print(f"ovmse {args.command}: {error}", file=sys.stderr)
        return 1
    except Terminated:  # SIGTERM, after the job cleaned up
        return 143
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
