"""Handlers of `ovmse replay-server` and `ovmse dataset validate|inspect|collect|convert`.

Each takes the parsed arguments and returns the exit code: 0 done, 2 a problem reported as one
line on stderr naming the file, field or key. Options the `ovmse` parser may not define (yet) are
read with defaults: validate `--map`, inspect `--plot`, collect `--policy`, `--epsilon`, `--envs`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.lifecycle import run_until_signal, sigterm_raises

if TYPE_CHECKING:
    from replay.dataset import MapLayout

DEFAULT_COLLECT_EPISODES = 5000  # the size of the paper's medium datasets
DEFAULT_COLLECT_ENVS = 16


def _fail(args: argparse.Namespace, message: object) -> int:
    print(f"ovmse {args.command}: " + " ".join(str(message).splitlines()), file=sys.stderr)
    return 2


def replay_server(args: argparse.Namespace) -> int:
    """Serve the offline and online tables until SIGTERM or SIGINT, checkpointing on the way."""
    from deploy.builder import Builder
    from deploy.config_args import config_from_args
    from deploy.roles import serve_replay_role
    from replay.dataset import DatasetError
    from replay.server import OfflineDataError

    cfg = config_from_args(args)

    def serve(stop) -> int:
        try:
            server = Builder(cfg).replay_server(progress=True)
        except DatasetError as error:
            hint = " (run.dataset: make one with `ovmse dataset collect`, or --set run.dataset=null)"
            return _fail(args, f"{error}{hint if error.detail == 'no such file' else ''}")
        except (OfflineDataError, ValueError, OSError) as error:
            return _fail(args, error)
        stats = server.stats()
        offline, online = stats["offline"], stats["online"]
        how = "loaded" if server.loaded_offline else ("restored" if server.restored else "empty")
        print(
            f"replay server on {server.address}: offline {offline.size} episodes ({how}); online "
            f"{online.size}/{online.capacity} episodes; checkpoints "
            f"{server.checkpoint_dir if server.checkpoints_enabled else 'off'}",
            flush=True,
        )
        serve_replay_role(cfg, stop, server)
        print(
            "replay server stopped" + (" (checkpoint written)" if server.checkpoints_enabled else ""),
            flush=True,
        )
        return 0

    return run_until_signal(serve)


def _map_layout(args: argparse.Namespace) -> tuple[MapLayout | None, int]:
    """The sizes the --map option names (None without one) and 0, or an unknown map reported: (None, 2)."""
    from replay.dataset import map_layout

    map_name = getattr(args, "map", None)
    try:
        return (map_layout(map_name) if map_name else None), 0
    except ValueError as error:
        return None, _fail(args, f"--map: {error}")


def dataset_validate(args: argparse.Namespace) -> int:
    """Check every episode of a file; with --map, also its sizes against the map."""
    from replay.dataset import DatasetError, validate_dataset

    expected, failed = _map_layout(args)
    if failed:
        return failed
    try:
        summary = validate_dataset(args.path, expected)
    except DatasetError as error:
        return _fail(args, error)
    against = f" for map {expected.map_name}" if expected else ""
    print(
        f"{args.path}: valid{against}: {summary.episodes} episodes, {summary.steps} steps, "
        f"episode_limit {summary.episode_limit}"
    )
    return 0


def default_plot_path(path: str | Path) -> Path:
    """data/3s5z_medium.h5 -> data/3s5z_medium.returns.png; a vault data/3m.vlt/Good ->
    data/3m_Good.returns.png (beside the vault, not inside it)."""
    path = Path(path)
    if path.is_dir() and path.parent.suffix == ".vlt":
        return path.parent.with_name(f"{path.parent.stem}_{path.name}.returns.png")
    return path.with_name(path.stem + ".returns.png")


def dataset_inspect(args: argparse.Namespace) -> int:
    """Episodes, steps, return min/mean/max, win rate, and a return histogram PNG."""
    from replay.dataset import DatasetError, inspect_dataset, plot_returns

    try:
        summary = inspect_dataset(args.path)
    except DatasetError as error:
        return _fail(args, error)
    plot = Path(getattr(args, "plot", None) or default_plot_path(args.path))
    try:
        plot_returns(summary, plot)
    except OSError as error:
        return _fail(args, f"{plot}: cannot write the histogram: {error.strerror or error}")
    wins = "recorded" if summary.wins_recorded else "inferred from returns"
    rows = (
        ("file", args.path),
        ("episodes", summary.episodes),
        (
            "steps",
            f"{summary.steps} (length min {summary.length_min}, mean {summary.length_mean:.1f}, "
            f"max {summary.length_max}; limit {summary.episode_limit})",
        ),
        (
            "return",
            f"min {summary.return_min:.2f}, mean {summary.return_mean:.2f}, max {summary.return_max:.2f}",
        ),
        ("win rate", f"{summary.win_rate:.3f} ({wins})"),
        ("histogram", plot),
    )
    for name, value in rows:
        print(f"{name:<10} {value}")
    return 0


def dataset_convert(args: argparse.Namespace) -> int:
    """An HDF5 dataset to a Flashbax vault, or a vault to an HDF5 dataset, checked as it is read."""
    from replay.convert import convert
    from replay.dataset import DatasetError

    expected, failed = _map_layout(args)
    if failed:
        return failed
    try:
        written, episodes = convert(args.path, args.out, expected)
    except (DatasetError, FileExistsError) as error:
        return _fail(args, error)
    except OSError as error:
        return _fail(args, f"{args.out}: cannot write: {error.strerror or error}")
    print(f"{args.path} -> {written}: {episodes} episodes")
    return 0


def dataset_collect(args: argparse.Namespace) -> int:
    """Roll out a scripted policy into a dataset file plus its card."""
    from deploy.config_args import config_from_args
    from deploy.recipes import CollectRequest, collect_dataset
    from replay.dataset import DatasetError
    from replay.dataset_writer import card_path

    cfg = config_from_args(args)
    policy = getattr(args, "policy", None) or "heuristic"
    if policy not in ("heuristic", "random", "qmix-replay") and not policy.startswith("checkpoint:"):
        return _fail(args, f"--policy {policy}: expected heuristic, random, qmix-replay or checkpoint:PATH")
    out = getattr(args, "out", None) or cfg.run.dataset
    if not out:
        return _fail(args, "--out: no output file (and run.dataset is not set)")
    episodes = getattr(args, "episodes", None) or DEFAULT_COLLECT_EPISODES
    if policy == "qmix-replay" or policy.startswith("checkpoint:"):
        return _collect_with_learner(args, cfg, policy, str(out), int(episodes))
    request = CollectRequest(
        out=str(out),
        episodes=int(episodes),
        policy=policy,
        epsilon=float(getattr(args, "epsilon", None) or 0.0),
        num_envs=int(getattr(args, "envs", None) or DEFAULT_COLLECT_ENVS),
    )
    try:
        with sigterm_raises():  # a stopped collection leaves no temporary file behind
            summary = collect_dataset(cfg, request, progress=True)
    except (DatasetError, ValueError) as error:
        return _fail(args, error)
    except OSError as error:
        return _fail(args, f"{out}: cannot write: {error.strerror or error}")
    print(
        f"{out}: {summary.episodes} episodes, {summary.steps} steps, return min {summary.return_min:.2f} "
        f"mean {summary.return_mean:.2f} max {summary.return_max:.2f}, win rate {summary.win_rate:.3f}; "
        f"card {card_path(out)}"
    )
    return 0


def _collect_with_learner(args: argparse.Namespace, cfg, policy: str, out: str, episodes: int) -> int:
    """The learned-policy recipes (deploy/recipes.py): a checkpoint's rollouts or QMIX's buffer."""
    from deploy.recipes import collect_qmix_replay, collect_with_checkpoint
    from replay.dataset import DatasetError
    from replay.dataset_writer import card_path

    epsilon = float(getattr(args, "epsilon", None) or 0.0)
    try:
        with sigterm_raises():  # a stopped collection leaves no temporary file behind
            if policy == "qmix-replay":
                summary = collect_qmix_replay(cfg, out, episodes)
            else:
                envs = int(getattr(args, "envs", None) or DEFAULT_COLLECT_ENVS)
                summary = collect_with_checkpoint(cfg, policy.split(":", 1)[1], out, episodes, epsilon, envs)
    except (DatasetError, ValueError) as error:
        return _fail(args, error)
    print(
        f"{out}: {summary.episodes} episodes, {summary.steps} steps, return min {summary.return_min:.2f} "
        f"mean {summary.return_mean:.2f} max {summary.return_max:.2f}, win rate {summary.win_rate:.3f}; "
        f"card {card_path(out)}"
    )
    return 0
