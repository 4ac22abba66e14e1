"""Handlers of `ovmse replay-server` and `ovmse dataset validate|inspect|collect|convert`.

Each takes the parsed arguments and returns the exit code: 0 done, 2 a problem reported as one
line on stderr naming the file, field or key. Options the `ovmse` parser may not define (yet) are
read with defaults: validate `--map`, inspect `--plot`, collect `--policy`, `--epsilon`, `--envs`,
`--overwrite`. A command that writes a named output refuses one that exists unless `--overwrite`
is given, before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.lifecycle import run_until_signal, sigterm_raises
from deploy.config_args import add_config_options, positive_int, probability

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
    """The sizes the --map option names (None without one) and 0, or an unknown map reported, with
    the closest known map: (None, 2)."""
    from common.config.problems import suggest
    from common.envs.maps import MAPS
    from replay.dataset import map_layout

    map_name = getattr(args, "map", None)
    if map_name and map_name not in MAPS:
        return None, _fail(
            args,
            f"--map: unknown map {map_name!r}{suggest(map_name, MAPS)}; the lite world has "
            f"{', '.join(sorted(MAPS))}",
        )
    try:
        return (map_layout(map_name) if map_name else None), 0
    except ValueError as error:
        return None, _fail(args, f"--map: {error}")


def _refuse_existing(args: argparse.Namespace, flag: str, path: str | Path) -> int:
    """2 (reported) when `path` exists and --overwrite was not given, else 0."""
    if Path(path).exists() and not getattr(args, "overwrite", False):
        return _fail(args, f"{flag} {path} already exists; pass --overwrite to replace it")
    return 0


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
    data/3m_Good.vault.returns.png (beside the vault, not inside it), and data/3m.vlt (a vault
    directory holding one dataset) -> data/3m.vault.returns.png: a vault's plot never takes the
    name of an HDF5 file's (data/3m_Good.h5's is data/3m_Good.returns.png)."""
    path = Path(path)
    if path.is_dir():
        if path.parent.suffix == ".vlt":
            return path.parent.with_name(f"{path.parent.stem}_{path.name}.vault.returns.png")
        return path.with_name(path.stem + ".vault.returns.png")
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
    from replay.convert import convert, destination
    from replay.dataset import DatasetError

    expected, failed = _map_layout(args)
    if failed:
        return failed
    if not Path(args.path).exists():
        return _fail(args, DatasetError(args.path, "file", "no such file"))
    if _refuse_existing(args, "--out", destination(args.path, args.out)):
        return 2
    try:
        written, episodes = convert(
            args.path, args.out, expected, overwrite=bool(getattr(args, "overwrite", False))
        )
    except (DatasetError, FileExistsError) as error:
        return _fail(args, error)
    except OSError as error:
        return _fail(args, f"{args.out}: cannot write: {error.strerror or error}")
    print(f"{args.path} -> {written}: {episodes} episodes")
    return 0


def _given(args: argparse.Namespace, name: str, default):
    """The option's value, or `default` when it is absent (None); a zero stays a zero."""
    value = getattr(args, name, None)
    return default if value is None else value


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
    if _refuse_existing(args, "--out" if getattr(args, "out", None) else "--out (run.dataset)", out):
        return 2
    episodes = _given(args, "episodes", DEFAULT_COLLECT_EPISODES)
    envs = _given(args, "envs", DEFAULT_COLLECT_ENVS)
    for flag, count in (("--episodes", episodes), ("--envs", envs)):
        if count < 1:  # never "0 means the default"
            return _fail(args, f"{flag}: must be at least 1, got {count}")
    if policy == "qmix-replay" or policy.startswith("checkpoint:"):
        return _collect_with_learner(args, cfg, policy, str(out), int(episodes))
    request = CollectRequest(
        out=str(out),
        episodes=int(episodes),
        policy=policy,
        epsilon=float(_given(args, "epsilon", 0.0)),
        num_envs=int(envs),
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

    epsilon = float(_given(args, "epsilon", 0.0))
    try:
        with sigterm_raises():  # a stopped collection leaves no temporary file behind
            if policy == "qmix-replay":
                summary = collect_qmix_replay(cfg, out, episodes)
            else:
                envs = int(_given(args, "envs", DEFAULT_COLLECT_ENVS))
                summary = collect_with_checkpoint(cfg, policy.split(":", 1)[1], out, episodes, epsilon, envs)
    except (DatasetError, ValueError) as error:
        return _fail(args, error)
    print(
        f"{out}: {summary.episodes} episodes, {summary.steps} steps, return min {summary.return_min:.2f} "
        f"mean {summary.return_mean:.2f} max {summary.return_max:.2f}, win rate {summary.win_rate:.3f}; "
        f"card {card_path(out)}"
    )
    return 0


# --- the dataset commands' options (`ovmse dataset ...`) ----------------------------------------


def dataset_path_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="HDF5 dataset file, or a Flashbax vault directory (NAME.vlt/UID)")


def validate_options(parser: argparse.ArgumentParser) -> None:
    dataset_path_options(parser)
    parser.add_argument(
        "--map", metavar="MAP", help="check shapes against this map's sizes (default: no map check)"
    )


def inspect_options(parser: argparse.ArgumentParser) -> None:
    dataset_path_options(parser)
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="return histogram (default: FILE.returns.png beside an HDF5 file; NAME_UID.vault.returns.png "
        "beside a vault NAME.vlt/UID)",
    )


def collect_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument(
        "--policy",
        default="heuristic",
        metavar="POLICY",
        help="heuristic | random | checkpoint:PATH (a learner checkpoint) | qmix-replay (the buffer of "
        "a from-scratch QMIX run of run.online_env_steps; --episodes = buffer size) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--epsilon",
        type=probability,
        default=0.0,
        metavar="E",
        help="random-action probability per agent (default: %(default)s, the policy's own actions)",
    )
    parser.add_argument(
        "--envs",
        type=positive_int,
        default=DEFAULT_COLLECT_ENVS,
        metavar="N",
        help="battles stepped together (default: %(default)s)",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=DEFAULT_COLLECT_EPISODES,
        metavar="N",
        help="episodes to collect (default: %(default)s, the size of the paper's datasets)",
    )
    parser.add_argument("--out", metavar="PATH", help="HDF5 file to write (default: run.dataset)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def convert_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="SRC", help="an HDF5 dataset file, or a vault directory NAME.vlt/UID")
    parser.add_argument(
        "--out",
        metavar="DST",
        required=True,
        help="for an HDF5 source the vault to write (NAME.vlt/UID; NAME.vlt alone: UID = the file's "
        "name), for a vault the HDF5 file",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--map",
        metavar="MAP",
        help="check shapes against this map's sizes (default: no map check; a vault ovmse did not write "
        "needs one)",
    )
