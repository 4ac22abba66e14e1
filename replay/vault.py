"""Flashbax vaults (the format of OG-MARL's datasets), read and written with TensorStore; no JAX.

A vault is a directory `NAME.vlt/UID/` (OG-MARL: `3m.vlt/Good/`) holding `metadata.json` and one
TensorStore zarr array per leaf of the experience tree, all on one OCDBT key-value store in that
directory. A leaf's key is its path in the tree with a dot after each part (`observations.`,
`infos.legals.`); `metadata.json` holds the format version and each leaf's shape and dtype
(`structure_shape`, `structure_dtype`); the array `vault_index` holds how many time steps are filled.
Every leaf is time-major with batch size 1, `[1, T, ...]`, episodes one after another, one row per
transition (observation, action, reward, end flags):

    observations [1, T, n, O]   actions [1, T, n]   rewards [1, T, n]   terminals [1, T, n]
    truncations [1, T, n]       infos.legals [1, T, n, A]   infos.state [1, T, S]

An episode ends on the row where every agent's terminal or truncation flag is set. OG-MARL's SMAC
recorder sets `terminals` at every end, the time limit included, and never `truncations`; so in a
vault that records no truncation at all, an episode of exactly episode_limit steps whose return is
not a win's is read as a time-limit end (PyMARL's `terminated` stays 0 and the learner bootstraps),
when the episode limit is known (the map, or our metadata).

A vault has no row for the observation after an episode's last step, which our episodes keep
(common/episode.py). Vaults we write carry it in three extra leaves, set on each episode's last
row: `infos.final_observations`, `infos.final_state`, `infos.final_legals`; plus `infos.battle_won`
[1, T] (1 on every row of a won episode) and, when the dataset has them, `infos.probs`. Tools that
read only the standard leaves are unaffected. For other vaults the final row repeats the last
row's observation, state and legal actions: a true end never looks at it, and a time-limit end
bootstraps from the last observation seen instead of the unseen next one.

`VaultView` presents a vault as the HDF5 layout of replay/dataset.py (episodes padded to
episode_limit + 1 rows), so every reader and check there works on it unchanged. `VaultWriter`
writes episodes to a new vault (built under a temporary name beside it, renamed when complete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from common.atomic_files import give_default_mode
from common.episode import Episode
from replay.dataset_error import DatasetError
from replay.staging import StagedWriter

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
INDEX_KEY = "vault_index"
VERSION = 1.2  # the format version Flashbax writes; readers accept the same major version
TIME_EXTENT = 10**13  # the time axis Flashbax gives every leaf (written rows: vault_index)
COMPRESSOR = {"id": "gzip", "level": 5}
OURS = "ovmse"  # metadata key of vaults this project wrote
READ_STEPS = 1 << 18  # time steps per read when scanning for episode ends
CHUNK_ELEMENTS = 1 << 20  # elements per stored chunk (about 4 MiB of float32 before gzip)

# leaf -> (accepted numpy dtype kinds, axes after [1, T]: names checked against each other)
STANDARD_LEAVES = {
    "observations": ("f", ("agents", "obs")),
    "actions": ("iuf", ("agents",)),
    "rewards": ("f", ("agents",)),
    "terminals": ("fiub", ("agents",)),
    "truncations": ("fiub", ("agents",)),
    "infos.legals": ("fiub", ("agents", "actions")),
    "infos.state": ("f", ("state",)),
}
EXTRA_LEAVES = {
    "infos.final_observations": ("f", ("agents", "obs")),
    "infos.final_state": ("f", ("state",)),
    "infos.final_legals": ("fiub", ("agents", "actions")),
    "infos.battle_won": ("fiub", ()),
    "infos.probs": ("f", ("agents", "actions")),
}
# The leaf a field of the HDF5 layout comes from: problems are reported by leaf.
FIELD_LEAF = {
    "state": "infos.state",
    "obs": "observations",
    "actions": "actions",
    "avail_actions": "infos.legals",
    "probs": "infos.probs",
    "reward": "rewards",
    "terminated": "terminals",
    "filled": "terminals",
}
# Won battles score at least this (SMAC scales a win to 20); replay/dataset.py uses the same bound.
WIN_RETURN = 19.9


def is_vault(path: str | os.PathLike) -> bool:
    """A dataset path names a vault when it is a directory (an HDF5 dataset is a file)."""
    return Path(path).is_dir()


def find_vault(path: str | os.PathLike) -> Path:
    """The vault directory `path` names: `NAME.vlt/UID`, or `NAME.vlt` when it holds one vault."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return path
    inside = sorted(p.name for p in path.iterdir() if (p / METADATA_FILE).is_file()) if path.is_dir() else []
    if len(inside) == 1:
        return path / inside[0]
    if inside:
        raise DatasetError(
            path,
            "vault",
            f"holds {len(inside)} vaults ({', '.join(inside)}); name one, e.g. {path / inside[0]}",
        )
    raise DatasetError(path, METADATA_FILE, "missing (a Flashbax vault is NAME.vlt/UID/metadata.json)")


def leaf_key(leaf: str) -> str:
    """The OCDBT key of a leaf: `infos.legals` -> `infos.legals.` (Flashbax ends each part with a dot)."""
    return leaf + "."


def _spec(base: Path, key: str) -> dict:
    return {
        "driver": "zarr",
        "kvstore": {"driver": "ocdbt", "base": f"file://{base}", "path": key},
    }


def _flatten(tree, prefix: str = "") -> dict:
    """{"infos": {"legals": x}} -> {"infos.legals": x}"""
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _nest(flat: dict) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _first_line(error: BaseException) -> str:
    """An error's first line, without the spec and source locations TensorStore appends."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    text = text.splitlines()[0]
    for tail in (" [tensorstore_spec=", " [source locations="):
        text = text.split(tail)[0]
    return text


def read_metadata(vault: Path) -> dict:
    """metadata.json, checked: JSON (never anything executable), version 1.x, leaf dtypes."""
    path = vault / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(vault, METADATA_FILE, f"cannot be read as JSON: {_first_line(error)}") from None
    if not isinstance(meta, dict):
        raise DatasetError(vault, METADATA_FILE, "is not a JSON object")
    version = meta.get("version")
    if not isinstance(version, (int, float)) or int(version) != int(VERSION):
        raise DatasetError(
            vault, METADATA_FILE, f"version {version!r}; this reader knows Flashbax vaults 1.x"
        )
    for key in ("structure_shape", "structure_dtype"):
        if not isinstance(meta.get(key), dict):
            raise DatasetError(vault, METADATA_FILE, f"{key} missing or not an object")
    return meta


class _Field:
    """One key of the HDF5 layout, as h5py would show it: shape, dtype, episode slices."""

    def __init__(self, view: VaultView, key: str, shape: tuple[int, ...], dtype):
        self._view, self._key = view, key
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __getitem__(self, episodes: slice) -> np.ndarray:
        start, stop, _ = episodes.indices(self.shape[0])
        return self._view.episode_block(start, stop)[self._key]


class VaultView:
    """A vault seen as the HDF5 layout of replay/dataset.py: `view[key].shape`, `view[key][a:b]`
    (episodes a..b-1, padded to episode_limit + 1 rows), `key in view`, `view.attrs`.

    Opening checks metadata.json, each leaf's presence, rank, dtype and sizes, and finds the
    episodes; problems raise DatasetError naming the leaf. `episode_limit` (the map's) sets the
    padded length; without it, our metadata's or the longest episode's."""

    def __init__(self, path: str | os.PathLike, episode_limit: int | None = None):
        import tensorstore as ts

        self._ts = ts
        self.path = find_vault(path)
        meta = read_metadata(self.path)
        self.ours = meta.get(OURS) if isinstance(meta.get(OURS), dict) else None
        dtypes = _flatten(meta["structure_dtype"])
        for leaf in STANDARD_LEAVES:
            if leaf not in dtypes:
                raise DatasetError(
                    self.path,
                    leaf,
                    "missing from metadata.json (an OG-MARL SMAC vault has "
                    + ", ".join(STANDARD_LEAVES)
                    + ")",
                )
        self.leaves = {leaf: self._open(leaf) for leaf in STANDARD_LEAVES}
        for leaf in EXTRA_LEAVES:
            if leaf in dtypes:
                self.leaves[leaf] = self._open(leaf)
        self.steps = self._filled_steps()
        self.sizes = self._check_shapes()
        self.begins, self.lengths, self.true_end = self._find_episodes()
        known_limit = episode_limit or (self.ours or {}).get("episode_limit")
        longest = int(self.lengths.max())
        self.episode_limit = int(known_limit or longest)
        if known_limit and self.unfinished_steps > self.episode_limit:
            raise DatasetError(
                self.path,
                "terminals",
                f"the last {self.unfinished_steps} steps (from step {self.steps - self.unfinished_steps}) "
                f"have no end flag, more than the episode limit {self.episode_limit}",
            )
        if self.unfinished_steps:
            log.warning(
                "%s: the last %d steps end with no terminal or truncation flag (an unfinished episode); "
                "they are left out",
                self.path,
                self.unfinished_steps,
            )
        if longest > self.episode_limit:
            e = int(np.argmax(self.lengths))
            raise DatasetError(
                self.path,
                "terminals",
                f"{longest} steps without an end flag (from step {self.begins[e]}), "
                f"longer than the episode limit {self.episode_limit}",
                episode=e,
            )
        if known_limit and self.ours is None and not self._records_truncations:
            self._time_limit_ends()
        self.attrs = dict((self.ours or {}).get("attrs", {}))
        if "infos.battle_won" in self.leaves:
            won = self._read("infos.battle_won", 0, self.steps).reshape(self.steps)
            self.attrs["battle_won"] = (won[self.begins + self.lengths - 1] != 0).astype(np.uint8)
        self._block: tuple[tuple[int, int], dict] | None = None
        n, rows = len(self.lengths), self.episode_limit + 1
        agents, obs, state, actions = (self.sizes[k] for k in ("agents", "obs", "state", "actions"))
        shapes = {
            "state": ((n, rows, state), np.float32),
            "obs": ((n, rows, agents, obs), np.float32),
            "actions": ((n, rows, agents, 1), np.int64),
            "avail_actions": ((n, rows, agents, actions), np.int32),
            "reward": ((n, rows, 1), np.float32),
            "terminated": ((n, rows, 1), np.uint8),
            "filled": ((n, rows, 1), np.int64),
        }
        if "infos.probs" in self.leaves:
            shapes["probs"] = ((n, rows, agents, actions), np.float32)
        self._fields = {key: _Field(self, key, shape, dtype) for key, (shape, dtype) in shapes.items()}

    # --- the h5py-like surface used by replay/dataset.py ---------------------------------------

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def __getitem__(self, key: str) -> _Field:
        return self._fields[key]

    def fault(self, key: str) -> str:
        """The leaf to name for a problem in `key` of the HDF5 layout."""
        return FIELD_LEAF.get(key, key)

    def close(self) -> None:
        self._block = None

    # --- opening -------------------------------------------------------------------------------

    def _open(self, leaf: str):
        try:
            return self._ts.open(_spec(self.path, leaf_key(leaf)), open=True, read=True).result()
        except Exception as error:  # tensorstore reports every failure as ValueError or its own
            raise DatasetError(self.path, leaf, f"cannot open its array: {_first_line(error)}") from None

    def _filled_steps(self) -> int:
        try:
            index = self._ts.open(_spec(self.path, INDEX_KEY), open=True, read=True).result()
            steps = int(np.asarray(index.read().result()).reshape(-1)[0])
        except Exception as error:
            raise DatasetError(self.path, INDEX_KEY, f"cannot be read: {_first_line(error)}") from None
        if steps < 1:
            raise DatasetError(self.path, INDEX_KEY, f"{steps} steps filled; the vault is empty")
        return steps

    def _check_shapes(self) -> dict[str, int]:
        sizes: dict[str, tuple[int, str]] = {}  # axis name -> (size, leaf that set it)
        for leaf, store in self.leaves.items():
            kinds, axes = {**STANDARD_LEAVES, **EXTRA_LEAVES}[leaf]
            shape = tuple(int(d) for d in store.shape)
            dtype = np.dtype(store.dtype.numpy_dtype)
            if dtype.kind not in kinds:
                raise DatasetError(self.path, leaf, f"dtype {dtype}; expected one of kind {kinds!r}")
            if (
                leaf in ("actions", "rewards", "terminals", "truncations")
                and len(shape) == 4
                and shape[3] == 1
            ):
                shape = shape[:3]  # a trailing axis of one: [1, T, n, 1]
            if len(shape) != 2 + len(axes):
                want = "[1, T" + "".join(f", {a}" for a in axes) + "]"
                raise DatasetError(self.path, leaf, f"shape {shape} has {len(shape)} axes, expected {want}")
            if shape[0] != 1:
                raise DatasetError(self.path, leaf, f"batch axis is {shape[0]}; only batch size 1 is read")
            if shape[1] < self.steps:
                raise DatasetError(
                    self.path, leaf, f"time axis holds {shape[1]} steps, but vault_index says {self.steps}"
                )
            for axis, size in zip(axes, shape[2:], strict=True):
                if axis in sizes and sizes[axis][0] != size:
                    raise DatasetError(
                        self.path, leaf, f"{axis} axis is {size}, but {sizes[axis][1]} has {sizes[axis][0]}"
                    )
                sizes.setdefault(axis, (size, leaf))
        return {axis: size for axis, (size, _) in sizes.items()}

    def _read(self, leaf: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of a leaf, [stop - start, ...] (the batch axis dropped)."""
        store = self.leaves[leaf]
        try:
            data = np.asarray(store[0, start:stop].read().result())
        except Exception as error:
            raise DatasetError(
                self.path, leaf, f"cannot read steps {start}..{stop - 1}: {_first_line(error)}"
            ) from None
        if leaf in ("actions", "rewards", "terminals", "truncations") and data.ndim == 3:
            data = data[..., 0]
        return data

    def _find_episodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episode start rows, lengths and true ends, from the end flags (every agent's)."""
        ends, terminal, truncated_any = [], [], False
        for start in range(0, self.steps, READ_STEPS):
            stop = min(start + READ_STEPS, self.steps)
            term = self._read("terminals", start, stop) != 0
            trunc = self._read("truncations", start, stop) != 0
            truncated_any |= bool(trunc.any())
            end = (term | trunc).all(axis=1)
            rows = np.flatnonzero(end)
            ends.append(rows + start)
            terminal.append(term[rows].all(axis=1) & ~trunc[rows].any(axis=1))
        self._records_truncations = truncated_any
        end_rows = np.concatenate(ends).astype(np.int64)
        if len(end_rows) == 0:
            raise DatasetError(
                self.path,
                "terminals",
                f"no episode ends in {self.steps} steps (no row where every agent's "
                "terminal or truncation flag is set)",
            )
        self.unfinished_steps = int(self.steps - 1 - end_rows[-1])
        begins = np.concatenate([[0], end_rows[:-1] + 1])
        return begins, end_rows - begins + 1, np.concatenate(terminal)

    def _time_limit_ends(self) -> None:
        """OG-MARL's SMAC vaults flag a time-limit end as a terminal: an episode of exactly
        episode_limit steps with no win's return ended by the time limit (PyMARL: not terminated)."""
        at_limit = np.flatnonzero(self.lengths == self.episode_limit)
        for e in at_limit:
            begin, length = int(self.begins[e]), int(self.lengths[e])
            episode_return = float(self._read("rewards", begin, begin + length)[:, 0].sum(dtype=np.float64))
            if episode_return < WIN_RETURN:
                self.true_end[e] = False

    # --- reading episodes ----------------------------------------------------------------------

    def episode_block(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Episodes start..stop-1 in the HDF5 layout (padded), every key at once (cached)."""
        if self._block is not None and self._block[0] == (start, stop):
            return self._block[1]
        out = {key: np.zeros((stop - start, *f.shape[1:]), f.dtype) for key, f in self._fields.items()}
        if stop <= start:
            return out
        t0 = int(self.begins[start])
        t1 = int(self.begins[stop - 1] + self.lengths[stop - 1])
        data = {
            leaf: self._read(leaf, t0, t1) for leaf in self.leaves if leaf not in ("terminals", "truncations")
        }
        rewards = data["rewards"]
        if rewards.ndim == 2:
            differ = np.flatnonzero((rewards != rewards[:, :1]).any(axis=1))
            if len(differ):
                raise DatasetError(
                    self.path,
                    "rewards",
                    f"agents' rewards differ at step {t0 + int(differ[0])}; QMIX needs one team reward",
                )
            rewards = rewards[:, 0]
        actions = data["actions"]
        if actions.dtype.kind == "f":
            odd = np.flatnonzero((actions != np.round(actions)).any(axis=1))
            if len(odd):
                raise DatasetError(self.path, "actions", f"not a whole number at step {t0 + int(odd[0])}")
        final = {
            "obs": data.get("infos.final_observations", data["observations"]),
            "state": data.get("infos.final_state", data["infos.state"]),
            "avail_actions": data.get("infos.final_legals", data["infos.legals"]),
        }
        for i, e in enumerate(range(start, stop)):
            s, length = int(self.begins[e]) - t0, int(self.lengths[e])
            last = s + length - 1
            rows = slice(s, s + length)
            out["state"][i, :length] = data["infos.state"][rows]
            out["obs"][i, :length] = data["observations"][rows]
            out["actions"][i, :length, :, 0] = actions[rows]
            out["avail_actions"][i, :length] = data["infos.legals"][rows] != 0
            out["reward"][i, :length, 0] = rewards[rows]
            out["state"][i, length] = final["state"][last]
            out["obs"][i, length] = final["obs"][last]
            out["avail_actions"][i, length] = final["avail_actions"][last] != 0
            out["filled"][i, : length + 1] = 1
            out["terminated"][i, length - 1] = self.true_end[e]
            if "probs" in out:
                out["probs"][i, :length] = data["infos.probs"][rows]
        self._block = ((start, stop), out)
        return out


# --- writing ----------------------------------------------------------------------------------


def _json_ready(value):
    """An HDF5 attribute value as JSON (numbers, strings, lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class VaultWriter(StagedWriter):
    """Writes episodes to a new vault directory `path` (`NAME.vlt/UID`) in OG-MARL's SMAC layout plus
    our extra leaves (module doc). Built under a temporary name beside `path` and renamed onto it
    by `close()`; leaving the `with` block by an exception removes it. `path` must not exist."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_agents: int,
        obs_size: int,
        state_size: int,
        n_actions: int,
        episode_limit: int,
        with_probs: bool = False,
        attrs: dict | None = None,
        block_steps: int = 1 << 16,
    ):
        import tensorstore as ts

        self._ts = ts
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path}: already exists; choose a new vault directory")
        super().__init__(path, directory=True)
        n, a = n_agents, n_actions
        self._shapes = {
            "observations": ((n, obs_size), "float32"),
            "actions": ((n,), "int32"),
            "rewards": ((n,), "float32"),
            "terminals": ((n,), "float32"),
            "truncations": ((n,), "float32"),
            "infos.legals": ((n, a), "float32"),
            "infos.state": ((state_size,), "float32"),
            "infos.final_observations": ((n, obs_size), "float32"),
            "infos.final_state": ((state_size,), "float32"),
            "infos.final_legals": ((n, a), "float32"),
            "infos.battle_won": ((), "uint8"),
        }
        if with_probs:
            self._shapes["infos.probs"] = ((n, a), "float32")
        self._meta = {
            "episode_limit": int(episode_limit),
            "attrs": {k: _json_ready(v) for k, v in (attrs or {}).items()},
        }
        self._block_steps = block_steps
        self._pending: dict[str, list[np.ndarray]] = {leaf: [] for leaf in self._shapes}
        self._pending_steps = 0
        self.steps = 0
        self.episodes = 0
        try:
            self._stores = {
                leaf: self._create(leaf, shape, dtype) for leaf, (shape, dtype) in self._shapes.items()
            }
        except BaseException:
            self.abort()
            raise

    def _create(self, leaf: str, shape: tuple[int, ...], dtype: str):
        per_step = int(np.prod(shape)) if shape else 1
        chunk = max(1, CHUNK_ELEMENTS // per_step)
        spec = _spec(self._tmp, leaf_key(leaf))
        spec["metadata"] = {"compressor": COMPRESSOR, "chunks": [1, chunk, *shape]}
        return self._ts.open(spec, create=True, dtype=dtype, shape=(1, TIME_EXTENT, *shape)).result()

    def append(self, episode: Episode, probs: np.ndarray | None = None) -> None:
        """Add one episode (its L transitions; the final observation row goes to the final_* leaves)."""
        length, n = episode.length, self._shapes["actions"][0][0]
        flags = np.zeros((length, n), np.float32)
        end = np.zeros_like(flags)
        end[-1] = 1.0
        true_end = bool(episode.terminated[:length].any())
        rows = {
            "observations": episode.obs[:length],
            "actions": episode.actions[:length, :, 0],
            "rewards": np.repeat(episode.reward[:length], n, axis=1),
            "terminals": end if true_end else flags,
            "truncations": flags if true_end else end,
            "infos.legals": episode.avail_actions[:length],
            "infos.state": episode.state[:length],
            "infos.battle_won": np.full(length, int(episode.meta.battle_won)),
        }
        for leaf, final in (
            ("infos.final_observations", episode.obs[length]),
            ("infos.final_state", episode.state[length]),
            ("infos.final_legals", episode.avail_actions[length]),
        ):
            block = np.zeros((length, *final.shape), np.float32)
            block[-1] = final
            rows[leaf] = block
        if "infos.probs" in self._shapes:
            block = np.zeros((length, *self._shapes["infos.probs"][0]), np.float32)
            if probs is not None:
                block[:] = probs[:length]
            rows["infos.probs"] = block
        for leaf, (_, dtype) in self._shapes.items():
            self._pending[leaf].append(np.asarray(rows[leaf], dtype=dtype))
        self._pending_steps += length
        self.episodes += 1
        if self._pending_steps >= self._block_steps:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_steps:
            return
        start, stop = self.steps, self.steps + self._pending_steps
        futures = [
            self._stores[leaf][0, start:stop].write(np.concatenate(blocks))
            for leaf, blocks in self._pending.items()
        ]
        for future in futures:
            future.result()
        self.steps = stop
        self._pending = {leaf: [] for leaf in self._shapes}
        self._pending_steps = 0

    def close(self) -> Path:
        """Write the remaining steps, vault_index and metadata.json, and move the vault into place."""
        try:
            if not self.episodes:
                raise ValueError("a vault needs at least one episode")
            self._flush()
            index = self._ts.open(
                _spec(self._tmp, INDEX_KEY), create=True, dtype="int32", shape=(1,)
            ).result()
            index.write(np.array([self.steps], np.int32)).result()
            shapes = {leaf: str((1, self.steps, *shape)) for leaf, (shape, _) in self._shapes.items()}
            dtypes = {leaf: dtype for leaf, (_, dtype) in self._shapes.items()}
            meta = {
                "version": VERSION,
                "structure_shape": _nest(shapes),
                "structure_dtype": _nest(dtypes),
                OURS: {**self._meta, "episodes": self.episodes},
            }
            (self._tmp / METADATA_FILE).write_text(json.dumps(meta))
            self._stores.clear()
            give_default_mode(self._tmp)
            os.rename(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the vault being written."""
        self._stores = {}
        shutil.rmtree(self._tmp, ignore_errors=True)
