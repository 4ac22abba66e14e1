"""`ovmse evaluate --checkpoint` and `ovmse export`: what a learner checkpoint or an exported agent
file records (its map, method and run configuration) applies unless an option says otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import CheckpointError, InputError
from deploy.config_args import config_from_args


def run_config_of(checkpoint: Path) -> Path | None:
    """The resolved configuration a run wrote beside its checkpoints (RUN/config.yaml for
    RUN/checkpoints/X.pt), or None."""
    if checkpoint.resolve().parent.name != "checkpoints":
        return None
    config = checkpoint.resolve().parent.parent / "config.yaml"
    return config if config.is_file() else None


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    """Greedy episodes of a learner checkpoint, or of an exported agent (`ovmse export`). What the
    file records applies unless an option says otherwise: its run's config.yaml (beside
    checkpoints/) unless --config is given, else its map (unless --map) and method (unless --method
    or --config). A --map other than the recorded one is refused."""
    from actors.evaluator import evaluate
    from deploy.builder import Builder
    from learner.agent_file import check_agent_map, read_agent
    from learner.checkpoint import read_checkpoint

    path = Path(args.checkpoint)
    if path.is_dir():
        raise InputError(f"--checkpoint {path}: a directory, not a checkpoint file")
    if not path.is_file():
        raise InputError(f"--checkpoint {path}: no such file")
    agent = read_agent(path)  # None: a learner checkpoint
    identity = agent[1] if agent is not None else read_checkpoint(path)[2]
    recorded = identity.get("map")
    if args.map is not None and recorded is not None and args.map != recorded:
        what = "was exported" if agent is not None else "is a checkpoint"
        raise InputError(
            f"--map {args.map}: {path} {what} for map {recorded}, not {args.map} "
            f"(leave --map out to evaluate it on {recorded})"
        )
    run_config = run_config_of(path) if args.config is None else None
    if run_config is not None:
        args.config = str(run_config)
    elif args.map is None and recorded:
        args.map = recorded
        if args.config is None:
            args.method = args.method or identity.get("method")
    cfg = config_from_args(args)
    episodes = args.episodes if args.episodes is not None else cfg.actor.test_episodes
    builder = Builder(cfg)
    if agent is not None:
        weights, identity = agent
        check_agent_map(path, identity, cfg.env.map_name)
        worker = builder.eval_worker()
        try:
            worker.set_weights(weights, 1)
        except (RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(
                path, f"does not fit the configured acting network: {first[:160]}"
            ) from None
    else:
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


def export(args: argparse.Namespace) -> int:
    """The acting network of a learner checkpoint, alone (learner/agent_file.py). The configuration
    is the run's own (config.yaml beside checkpoints/) unless --config or --map is given."""
    from deploy.builder import Builder
    from learner.agent_file import export_agent

    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if not checkpoint.is_file():
        raise InputError(f"--checkpoint {checkpoint}: no such file")
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out} already exists; pass --overwrite to replace it")
    run_config = run_config_of(checkpoint)
    if args.config is None and args.map is None and run_config is not None:
        args.config = str(run_config)
    cfg = config_from_args(args)
    learner = Builder(cfg).learner(checkpoint)
    export_agent(learner, out, cfg.env.map_name)
    print(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): "
        f"the {cfg.learner.method} agent for {cfg.env.map_name}"
    )
    return 0
