"""Dataset files: CFCQL's HDF5 layout, read, validated and summarised (writing: dataset_writer.py).

The layout is the one CFCQL's SMAC datasets use (they save PyMARL `EpisodeBatch` tensors with h5py):
eight datasets at the file's root, each `[N, episode_limit + 1, ...]`, with the dtypes of PyMARL's
scheme:

    state [N, T+1, S] float32        obs [N, T+1, n, O] float32      actions [N, T+1, n, 1] int64
    avail_actions [N, T+1, n, A] int32   probs [N, T+1, n, A] float32   reward [N, T+1, 1] float32
    terminated [N, T+1, 1] uint8     filled [N, T+1, 1] int64

`filled` marks rows 0..L of an episode of L steps (PyMARL marks the final observation filled too);
the rows after it are zero padding. `probs` is the behaviour policy's action distribution; CFCQL
only fills it when collecting with `save_probs`, so it may be all zeros, and files without it load.
CFCQL's loader hands *every* key of the file to `EpisodeBatch.update`, which raises on keys outside
its scheme, so our files hold exactly these eight keys; our metadata (map, policy, per-episode
battle_won) lives in HDF5 attributes, which their loader never reads.

Reading strips the padding: each episode becomes an `Episode` with exactly L + 1 rows, with the
final row's action, reward and terminated set to 0 as `common.episode` specifies (CFCQL stores the
action its policy picked at the final observation there). A file whose final observation row is not
marked filled (the terminal flag sits on the last filled row) is read as L = filled rows; see
`episode_lengths`.

A Flashbax vault directory (OG-MARL's datasets) is read wherever a file is: `open_dataset` shows it
in this layout (replay/vault.py), and problems name the vault's leaf instead of the HDF5 key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from common.atomic_files import atomic_path
from common.episode import FIELD_DTYPES, STEP_FIELDS, Episode, EpisodeMeta
from common.episode_checks import MapLayout as MapLayout  # re-exported: the dataset commands use it
from common.episode_checks import episode_problem
from common.episode_checks import expected_layout as _world_layout
from common.episode_checks import map_layout as map_layout
from replay.dataset_error import DatasetError

# --- the format -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetExpectation(MapLayout):
    """A map's layout plus the SMACv2 configuration (JSON) its dataset must have been made with."""

    smacv2: str | None = None


def expected_layout(env_cfg) -> MapLayout | None:
    """What a dataset for the configured world must hold (common.episode_checks.expected_layout),
    and on a SMACv2 scenario the configuration its file records (`EnvConfig.smacv2_record`)."""
    layout = _world_layout(env_cfg)
    record = getattr(env_cfg, "smacv2_record", lambda: None)()
    if layout is None or record is None:
        return layout
    values = {f.name: getattr(layout, f.name) for f in fields(layout)}
    return DatasetExpectation(**values, smacv2=json.dumps(record, sort_keys=True))


REQUIRED_KEYS = STEP_FIELDS  # `probs` is optional on reading
# The dtypes CFCQL's files hold (PyMARL scheme: th.long actions and filled, th.int avail_actions).
CFCQL_DTYPES: dict[str, np.dtype] = {
    "state": np.dtype(np.float32),
    "obs": np.dtype(np.float32),
    "actions": np.dtype(np.int64),
    "avail_actions": np.dtype(np.int32),
    "probs": np.dtype(np.float32),
    "reward": np.dtype(np.float32),
    "terminated": np.dtype(np.uint8),
    "filled": np.dtype(np.int64),
}
CFCQL_KEYS = tuple(CFCQL_DTYPES)  # every dataset a CFCQL file holds
# What we accept on reading: numpy dtype kinds (f float, i/u integer, b bool).
ACCEPTED_KINDS = {
    "state": "f",
    "obs": "f",
    "probs": "f",
    "reward": "f",
    "actions": "iu",
    "avail_actions": "iub",
    "terminated": "iub",
    "filled": "iub",
}
# Attributes we write (CFCQL ignores attributes).
SCHEMA_ATTR = "ovmse_schema"
BATTLE_WON_ATTR = "battle_won"
# HDF5 keeps attributes in the object header (64 KiB); past this many episodes battle_won is not
# stored and the win rate is inferred from returns instead.
MAX_BATTLE_WON_ATTR = 60_000
# SMAC scales returns so that a won battle is worth reward_scale_rate = 20; a lost one misses the
# win bonus (200 of ~1,500 raw points on the paper's maps, i.e. >= 2.5 scaled), so a true-terminal
# episode at or above this return was a win. Used only for files that do not record battle_won.
INFERRED_WIN_RETURN = 19.9
READ_CHUNK = 64  # episodes read and checked at a time


@dataclass(frozen=True)
class EpisodeProblem:
    """What is wrong with one episode (before the file name is known)."""

    episode: int
    field: str
    detail: str


@dataclass(frozen=True)
class DatasetLayout:
    """The sizes a file's shapes imply."""

    episodes: int
    rows: int  # episode_limit + 1
    n_agents: int
    obs_size: int
    state_size: int
    n_actions: int
    has_probs: bool

    @property
    def episode_limit(self) -> int:
        return self.rows - 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Full shape of every key, CFCQL layout."""
        n, t = self.episodes, self.rows
        return {
            "state": (n, t, self.state_size),
            "obs": (n, t, self.n_agents, self.obs_size),
            "actions": (n, t, self.n_agents, 1),
            "avail_actions": (n, t, self.n_agents, self.n_actions),
            "probs": (n, t, self.n_agents, self.n_actions),
            "reward": (n, t, 1),
            "terminated": (n, t, 1),
            "filled": (n, t, 1),
        }


def load_episodes(
    path: str | os.PathLike, expected: MapLayout | None = None, progress: bool = False
) -> list[Episode]:
    """Every episode of a file in memory, checked as it is read, with a progress bar if asked."""
    from tqdm import tqdm

    total = dataset_layout(path, expected).episodes
    with tqdm(total=total, desc=f"load {Path(path).name}", unit="ep", disable=not progress) as bar:
        return list(iter_episodes(path, expected, on_chunk=bar.update))


# --- layout checks (shapes and dtypes; no data read) ------------------------------------------


def read_layout(h5, path: str | os.PathLike, expected: MapLayout | None = None) -> DatasetLayout:
    """The layout of an open file, after checking keys, ranks, shapes and dtypes (and, given
    `expected`, the map's sizes). Raises DatasetError naming the first bad key."""
    for key in REQUIRED_KEYS:
        if key not in h5:
            raise DatasetError(path, key, "missing (CFCQL layout needs " + ", ".join(REQUIRED_KEYS) + ")")
        if not hasattr(h5[key], "shape"):
            raise DatasetError(path, key, "is a group, expected a dataset")
    ranks = {"state": 3, "obs": 4, "actions": 4, "avail_actions": 4, "probs": 4}
    for key in CFCQL_KEYS:
        if key not in h5:
            continue
        want = ranks.get(key, 3)
        if len(h5[key].shape) != want:
            raise DatasetError(
                path, key, f"shape {tuple(h5[key].shape)} has {len(h5[key].shape)} axes, expected {want}"
            )
        kind = h5[key].dtype.kind
        if kind not in ACCEPTED_KINDS[key]:
            raise DatasetError(path, key, f"dtype {h5[key].dtype}, expected {CFCQL_DTYPES[key]}")
    episodes, rows = h5["actions"].shape[:2]
    layout = DatasetLayout(
        episodes=int(episodes),
        rows=int(rows),
        n_agents=int(h5["actions"].shape[2]),
        obs_size=int(h5["obs"].shape[3]),
        state_size=int(h5["state"].shape[2]),
        n_actions=int(h5["avail_actions"].shape[3]),
        has_probs="probs" in h5,
    )
    if episodes < 1:
        raise DatasetError(path, "actions", "holds no episodes")
    if rows < 2:
        raise DatasetError(path, "actions", f"time axis has {rows} rows; an episode needs at least 2")
    wanted = layout.shapes()
    for key in CFCQL_KEYS:
        if key in h5 and tuple(h5[key].shape) != wanted[key]:
            raise DatasetError(path, key, f"shape {tuple(h5[key].shape)}, expected {wanted[key]}")
    if expected is not None:
        _check_map(layout, expected, path, lambda key: _fault(h5, key))
        _check_smacv2(h5, expected, path)
    return layout


def _check_smacv2(h5, expected: MapLayout, path) -> None:
    """A SMACv2 dataset made with another capability configuration or SMACv2 flags is refused,
    naming the first key that differs (files that record none are taken as they are)."""
    from common.envs.smacv2 import RECORD_KEY, record_mismatch

    wanted = getattr(expected, "smacv2", None)
    recorded = getattr(h5, "attrs", {}).get(RECORD_KEY)
    if wanted is None or recorded is None:
        return
    problem = record_mismatch(json.loads(recorded), json.loads(wanted))
    if problem:
        raise DatasetError(path, "attrs", problem)


def _check_map(layout: DatasetLayout, expected: MapLayout, path, name=lambda key: key) -> None:
    checks = (
        ("obs", "agents", layout.n_agents, expected.n_agents),
        ("obs", "observation size", layout.obs_size, expected.obs_size),
        ("state", "state size", layout.state_size, expected.state_size),
        ("avail_actions", "actions", layout.n_actions, expected.n_actions),
        ("filled", "time axis (episode_limit + 1)", layout.rows, expected.episode_limit + 1),
    )
    for key, what, got, want in checks:
        if got != want:
            raise DatasetError(path, name(key), f"{what} is {got}, but map {expected.map_name} has {want}")


# --- episode checks (pure, on a chunk of episodes) --------------------------------------------


def episode_lengths(
    filled: np.ndarray, terminated: np.ndarray, first: int = 0
) -> tuple[np.ndarray, EpisodeProblem | None]:
    """Steps L of each episode of a chunk (filled, terminated: [c, T+1] integer), and the problem
    with the first bad one (None if all are fine; lengths of bad episodes are only a best guess).
    `first` is the index of the chunk's first episode in the file.

    PyMARL/CFCQL: filled = 1 on rows 0..L, terminated = 1 on row L-1 at a true end (0 everywhere
    after a time-limit end), so L = filled rows - 1. Some converters leave the final observation row
    unmarked; then the terminal flag sits on the last filled row and L = filled rows. (A time-limit
    episode in that convention cannot be told apart and loses its last step.)"""
    c, rows = filled.shape
    is_filled = filled != 0
    is_end = terminated != 0
    n_filled = is_filled.sum(axis=1).astype(np.int64)
    term_count = is_end.sum(axis=1)
    term_row = np.where(term_count > 0, is_end.argmax(axis=1), -1)
    unmarked_final = (term_count == 1) & (term_row == n_filled - 1)
    lengths = np.where(unmarked_final, n_filled, n_filled - 1).clip(0, rows - 1)

    problems: list[EpisodeProblem] = []

    def first_of(mask: np.ndarray, field_name: str, describe: Callable[[int], str]) -> None:
        if mask.any():
            e = int(np.argmax(mask))
            problems.append(EpisodeProblem(first + e, field_name, describe(e)))

    bad_value = (filled != 0) & (filled != 1)
    first_of(
        bad_value.any(axis=1), "filled", lambda e: f"value {filled[e][bad_value[e]][0]}; expected 0 or 1"
    )
    gap = np.diff(is_filled.astype(np.int8), axis=1) > 0
    first_of(
        gap.any(axis=1), "filled", lambda e: f"row {int(gap[e].argmax()) + 1} is filled after an unfilled row"
    )
    first_of(
        n_filled < 2, "filled", lambda e: f"{n_filled[e]} filled rows; an episode needs at least 2 (one step)"
    )
    first_of(
        ((terminated != 0) & (terminated != 1)).any(axis=1),
        "terminated",
        lambda e: "values other than 0 and 1",
    )
    first_of(
        term_count > 1, "terminated", lambda e: f"set on {term_count[e]} rows; at most one (the last step)"
    )
    misplaced = (term_count == 1) & (term_row != n_filled - 2) & ~unmarked_final
    first_of(
        misplaced,
        "terminated",
        lambda e: (
            f"set at row {term_row[e]}, but the episode's last step is row {n_filled[e] - 2} "
            f"(filled rows 0..{n_filled[e] - 1})"
        ),
    )
    first_of(
        unmarked_final & (n_filled >= rows),
        "filled",
        lambda e: "the terminal step is the last row, leaving no row for the final observation",
    )
    # min() keeps the first of equals: for one episode, the order of the checks above decides.
    return lengths, min(problems, key=lambda p: p.episode, default=None)


def check_chunk(arrays: dict[str, np.ndarray], lengths: np.ndarray, first: int = 0) -> EpisodeProblem | None:
    """The first problem in a chunk's data given its episodes' lengths: actions out of range or not
    available where taken, agents with no available action, non-finite numbers."""
    c, rows = arrays["actions"].shape[:2]
    n_actions = arrays["avail_actions"].shape[-1]
    t = np.arange(rows)[None, :]
    taken_rows = t < lengths[:, None]  # [c, T+1]: rows where an action was taken
    actions = arrays["actions"][..., 0].astype(np.int64)  # [c, T+1, n]
    avail = arrays["avail_actions"].astype(bool)
    problems: list[EpisodeProblem] = []

    def first_agent_problem(bad: np.ndarray, key: str, describe: Callable[[int, int, int], str]) -> None:
        """Record the first (episode, step, agent) where `bad` [c, T+1, n] holds, if any."""
        if bad.any():
            e, step, agent = (int(i) for i in np.argwhere(bad)[0])
            problems.append(EpisodeProblem(first + e, key, describe(e, step, agent)))

    out_of_range = taken_rows[:, :, None] & ((actions < 0) | (actions >= n_actions))
    first_agent_problem(
        out_of_range,
        "actions",
        lambda e, step, agent: (
            f"agent {agent} took action {actions[e, step, agent]} at step {step}; "
            f"actions are 0..{n_actions - 1}"
        ),
    )
    clipped = np.clip(actions, 0, n_actions - 1)
    available = np.take_along_axis(avail, clipped[..., None], axis=-1)[..., 0]
    first_agent_problem(
        taken_rows[:, :, None] & ~available & ~out_of_range,
        "actions",
        lambda e, step, agent: (
            f"agent {agent} took action {actions[e, step, agent]} at step {step}, "
            "which avail_actions marks unavailable"
        ),
    )
    first_agent_problem(
        taken_rows[:, :, None] & ~avail.any(axis=-1),
        "avail_actions",
        lambda e, step, agent: f"agent {agent} has no available action at step {step}",
    )
    held_rows = t <= lengths[:, None]
    for key in ("state", "obs", "reward"):
        values = arrays[key]
        finite = np.isfinite(values).reshape(c, rows, -1).all(axis=-1)
        bad = held_rows & ~finite
        if bad.any():
            e, step = np.argwhere(bad)[0]
            problems.append(EpisodeProblem(first + int(e), key, f"not finite at row {step}"))
    return min(problems, key=lambda p: p.episode) if problems else None


def to_episode(arrays: dict[str, np.ndarray], i: int, length: int, meta: EpisodeMeta) -> Episode:
    """Episode i of a chunk, cut to length + 1 rows, in the episode schema's dtypes, with the final
    row's action, reward and terminated zeroed and every held row filled."""
    rows = length + 1
    cut = {key: np.array(arrays[key][i, :rows], dtype=FIELD_DTYPES[key]) for key in STEP_FIELDS}
    cut["actions"][length] = 0
    cut["reward"][length] = 0.0
    cut["terminated"][length] = 0
    cut["filled"][:] = 1
    return Episode(**cut, meta=meta)


# --- reading ------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_dataset(path: str | os.PathLike, expected: MapLayout | None = None):
    """h5py.File for reading, with unreadable files reported as DatasetError(field="file"); for a
    directory, the Flashbax vault there seen in the same layout (replay/vault.py), padded to
    `expected`'s episode limit when given."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "file", "no such file")
    if path.is_dir():
        from replay.vault import VaultView

        view = VaultView(path, expected.episode_limit if expected is not None else None)
        try:
            yield view
        finally:
            view.close()
        return
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(
            path, "file", f"cannot be read as HDF5 (truncated or not HDF5): {detail}"
        ) from None
    try:
        yield h5
    finally:
        h5.close()


def _fault(h5, key: str) -> str:
    """The name to give a problem in `key`: the key itself, or for a vault the leaf it comes from."""
    fault = getattr(h5, "fault", None)
    return fault(key) if fault is not None else key


def _read(h5, key: str, start: int, stop: int, path) -> np.ndarray:
    try:
        return h5[key][start:stop]
    except DatasetError:
        raise
    except (OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(path, key, f"cannot read episodes {start}..{stop - 1}: {first_line}") from None


def _battle_won_attr(h5, episodes: int) -> np.ndarray | None:
    won = h5.attrs.get(BATTLE_WON_ATTR)
    if won is None or np.asarray(won).shape != (episodes,):
        return None
    return np.asarray(won).astype(bool)


def infer_battle_won(returns: np.ndarray, true_end: np.ndarray) -> np.ndarray:
    """Wins of a file that does not record them: true-terminal episodes with a won battle's return."""
    return np.asarray(true_end, dtype=bool) & (np.asarray(returns) >= INFERRED_WIN_RETURN)


def iter_episodes(
    path: str | os.PathLike,
    expected: MapLayout | None = None,
    chunk: int = READ_CHUNK,
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[Episode]:
    """Every episode of a file (or vault) as an `Episode` (source "offline"), checked as it is read.

    Raises DatasetError at the first problem, possibly after yielding earlier episodes: callers
    that must not act on a partly bad file (the offline-table loader) undo what they did with them.
    `on_chunk(n)` is told how many episodes each chunk held (for progress bars)."""
    for episode, _ in iter_episodes_with_probs(path, expected, chunk, on_chunk, probs=False):
        yield episode


def iter_episodes_with_probs(
    path: str | os.PathLike,
    expected: MapLayout | None = None,
    chunk: int = READ_CHUNK,
    on_chunk: Callable[[int], None] | None = None,
    probs: bool = True,
) -> Iterator[tuple[Episode, np.ndarray | None]]:
    """`iter_episodes`, each episode with its behaviour distribution [L + 1, n, A] (None when the
    file has no `probs`, or with `probs=False`)."""
    with open_dataset(path, expected) as h5:
        layout = read_layout(h5, path, expected)
        recorded_wins = _battle_won_attr(h5, layout.episodes)
        keys = REQUIRED_KEYS + (("probs",) if probs and layout.has_probs else ())
        for start in range(0, layout.episodes, chunk):
            stop = min(start + chunk, layout.episodes)
            arrays = {key: _read(h5, key, start, stop, path) for key in keys}
            lengths, structure = episode_lengths(
                arrays["filled"][..., 0], arrays["terminated"][..., 0], start
            )
            found = [p for p in (structure, check_chunk(arrays, lengths, start)) if p is not None]
            if found:  # the first bad episode; for one episode, its structure before its data
                problem = min(found, key=lambda p: p.episode)
                raise DatasetError(path, _fault(h5, problem.field), problem.detail, problem.episode)
            for i, length in enumerate(lengths):
                length = int(length)
                episode_return = float(arrays["reward"][i, :length, 0].sum(dtype=np.float64))
                if recorded_wins is not None:
                    won = bool(recorded_wins[start + i])
                else:
                    true_end = bool(arrays["terminated"][i, :length].any())
                    won = bool(infer_battle_won(np.array([episode_return]), np.array([true_end]))[0])
                meta = EpisodeMeta(episode_return=episode_return, battle_won=won, source="offline")
                behaviour = np.array(arrays["probs"][i, : length + 1]) if "probs" in arrays else None
                episode = to_episode(arrays, i, length, meta)
                problem = episode_problem(episode, expected)  # what online items are held to
                if problem is not None:
                    raise DatasetError(path, _fault(h5, problem.field), problem.detail, start + i)
                yield episode, behaviour
            if on_chunk is not None:
                on_chunk(stop - start)


def read_episodes(path: str | os.PathLike, expected: MapLayout | None = None) -> list[Episode]:
    """All episodes of a (valid) file in memory. For small files and tests; large files stream
    through `iter_episodes`."""
    return list(iter_episodes(path, expected))


def dataset_layout(path: str | os.PathLike, expected: MapLayout | None = None) -> DatasetLayout:
    """The layout of a file (shapes and dtypes checked, data not read)."""
    with open_dataset(path, expected) as h5:
        return read_layout(h5, path, expected)


def file_fingerprint(path: str | os.PathLike, block: int = 1 << 23) -> str:
    """blake2b of the file's bytes (of a vault directory: of each file's relative path and bytes):
    which dataset a replay checkpoint's offline table came from."""
    digest = hashlib.blake2b(digest_size=20)
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    return digest.hexdigest()


# --- validation and summaries -------------------------------------------------------------------


@dataclass
class DatasetSummary:
    """What `ovmse dataset inspect` and the dataset card report."""

    path: str
    episodes: int
    steps: int
    episode_limit: int
    return_min: float
    return_mean: float
    return_max: float
    win_rate: float
    wins_recorded: bool  # False: wins inferred from returns (CFCQL files do not record them)
    length_min: int
    length_mean: float
    length_max: int
    returns: list[float] = field(default_factory=list, repr=False)

    def card(self, **extra) -> dict:
        """The dataset card (JSON-ready): size and return statistics, plus `extra`."""
        data = {k: v for k, v in asdict(self).items() if k != "returns"}
        data.update(extra)
        if isinstance(data.get("smacv2"), str):  # the file's SMACv2 configuration, as JSON
            data["smacv2"] = json.loads(data["smacv2"])
        return data


def summarize(
    path: str | os.PathLike,
    returns: np.ndarray,
    lengths: np.ndarray,
    won: np.ndarray,
    recorded: bool,
    limit: int,
) -> DatasetSummary:
    returns = np.asarray(returns, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    return DatasetSummary(
        path=str(path),
        episodes=int(len(returns)),
        steps=int(lengths.sum()),
        episode_limit=int(limit),
        return_min=float(returns.min()),
        return_mean=float(returns.mean()),
        return_max=float(returns.max()),
        win_rate=float(np.mean(won)),
        wins_recorded=recorded,
        length_min=int(lengths.min()),
        length_mean=float(lengths.mean()),
        length_max=int(lengths.max()),
        returns=[float(r) for r in returns],
    )


def validate_dataset(path: str | os.PathLike, expected: MapLayout | None = None) -> DatasetSummary:
    """Read and check every episode; raise DatasetError at the first problem, else summarise."""
    returns, lengths, won = [], [], []
    with open_dataset(path, expected) as h5:
        layout = read_layout(h5, path, expected)
        recorded = _battle_won_attr(h5, layout.episodes) is not None
    for episode in iter_episodes(path, expected):
        returns.append(episode.meta.episode_return)
        lengths.append(episode.length)
        won.append(episode.meta.battle_won)
    return summarize(
        path, np.array(returns), np.array(lengths), np.array(won), recorded, layout.episode_limit
    )


def inspect_dataset(path: str | os.PathLike, chunk: int = 1024) -> DatasetSummary:
    """Summary from the small keys only (reward, terminated, filled): fast on large files. Does not
    check observations or actions; `validate_dataset` does."""
    returns, lengths, true_end = [], [], []
    with open_dataset(path) as h5:
        layout = read_layout(h5, path)
        recorded_wins = _battle_won_attr(h5, layout.episodes)
        for start in range(0, layout.episodes, chunk):
            stop = min(start + chunk, layout.episodes)
            filled = _read(h5, "filled", start, stop, path)[..., 0]
            terminated = _read(h5, "terminated", start, stop, path)[..., 0]
            reward = _read(h5, "reward", start, stop, path)[..., 0].astype(np.float64)
            got, problem = episode_lengths(filled, terminated, start)
            if problem is not None:
                raise DatasetError(path, _fault(h5, problem.field), problem.detail, problem.episode)
            taken = np.arange(layout.rows)[None, :] < got[:, None]
            returns.append((reward * taken).sum(axis=1))
            lengths.append(got)
            true_end.append((terminated.astype(bool) & taken).any(axis=1))
    returns_arr, lengths_arr, true_end_arr = (np.concatenate(x) for x in (returns, lengths, true_end))
    if recorded_wins is not None:
        won = recorded_wins
    else:
        won = infer_battle_won(returns_arr, true_end_arr)
    return summarize(path, returns_arr, lengths_arr, won, recorded_wins is not None, layout.episode_limit)


def plot_returns(summary: DatasetSummary, out: str | os.PathLike, title: str | None = None) -> Path:
    """Histogram of episode returns (the kind of the paper's Figure 5) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(summary.returns, bins=40, color="#4c72b0", edgecolor="white")
    ax.axvline(summary.return_mean, color="#c44e52", linestyle="--", label=f"mean {summary.return_mean:.2f}")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(title or f"{Path(summary.path).name}: {summary.episodes} episodes")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
