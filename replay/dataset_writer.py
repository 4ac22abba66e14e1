"""Writing dataset files in CFCQL's HDF5 layout (replay/dataset.py describes it), and where their
JSON cards go. A file is built under a temporary name next to its destination and renamed into place
when complete, so nobody ever reads a half-written file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.atomic_files import give_default_mode
from common.episode import Episode
from replay.dataset import (
    BATTLE_WON_ATTR,
    CFCQL_DTYPES,
    CFCQL_KEYS,
    MAX_BATTLE_WON_ATTR,
    SCHEMA_ATTR,
    DatasetLayout,
)
from replay.staging import StagedWriter


class DatasetWriter(StagedWriter):
    """Writes episodes to a new HDF5 file in CFCQL's layout, padded to episode_limit + 1 rows.

    The file is built under a temporary name next to `path` and renamed onto it by `close()`, so a
    reader never sees a half-written file; leaving the `with` block by an exception removes it.
    Datasets are chunked per episode and gzip-compressed (padding compresses to almost nothing);
    h5py and every HDF5 build read gzip."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_agents: int,
        obs_size: int,
        state_size: int,
        n_actions: int,
        episode_limit: int,
        attrs: dict | None = None,
        compression: str | None = "gzip",
        block: int = 64,
    ):
        import h5py

        super().__init__(path)
        self.layout = DatasetLayout(0, episode_limit + 1, n_agents, obs_size, state_size, n_actions, True)
        self._h5 = h5py.File(self._tmp, "w")
        self._block = block
        self._pending: list[tuple[Episode, np.ndarray | None]] = []
        self._won: list[bool] = []
        self._written = 0
        for key, shape in self.layout.shapes().items():
            kwargs = (
                {"compression": compression, "compression_opts": 1, "shuffle": True} if compression else {}
            )
            self._h5.create_dataset(
                key,
                shape=(0, *shape[1:]),
                maxshape=(None, *shape[1:]),
                dtype=CFCQL_DTYPES[key],
                chunks=(1, *shape[1:]),
                **kwargs,
            )
        self._h5.attrs[SCHEMA_ATTR] = 1
        for name, value in (attrs or {}).items():
            self._h5.attrs[name] = value

    def append(self, episode: Episode, probs: np.ndarray | None = None) -> None:
        """Add one episode; `probs` [L+1, n, A] is the behaviour policy's distribution (zeros if None)."""
        if episode.length > self.layout.episode_limit:
            raise ValueError(
                f"episode of {episode.length} steps exceeds episode_limit {self.layout.episode_limit}"
            )
        self._pending.append((episode, probs))
        self._won.append(bool(episode.meta.battle_won))
        if len(self._pending) >= self._block:
            self._flush()

    @property
    def episodes(self) -> int:
        """Episodes appended so far."""
        return self._written + len(self._pending)

    def _flush(self) -> None:
        if not self._pending:
            return
        count = len(self._pending)
        start = self._written
        shapes = self.layout.shapes()
        for key in CFCQL_KEYS:
            block = np.zeros((count, *shapes[key][1:]), dtype=CFCQL_DTYPES[key])
            for i, (episode, probs) in enumerate(self._pending):
                rows = episode.length + 1
                if key == "probs":
                    if probs is not None:
                        block[i, :rows] = probs
                else:
                    block[i, :rows] = getattr(episode, key)
            dataset = self._h5[key]
            dataset.resize(start + count, axis=0)
            dataset[start : start + count] = block
        self._written += count
        self._pending.clear()

    def close(self) -> Path:
        """Finish the file and move it to `path`."""
        self._flush()
        if len(self._won) <= MAX_BATTLE_WON_ATTR:
            self._h5.attrs[BATTLE_WON_ATTR] = np.array(self._won, dtype=np.uint8)
        self._h5.close()
        give_default_mode(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the file being written."""
        with contextlib.suppress(Exception):
            self._h5.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def write_dataset(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    episode_limit: int,
    probs: Sequence[np.ndarray | None] | None = None,
    attrs: dict | None = None,
) -> Path:
    """Write `episodes` (all of one map) to `path` in CFCQL's layout."""
    if not episodes:
        raise ValueError("write_dataset needs at least one episode")
    first = episodes[0]
    with DatasetWriter(
        path,
        n_agents=first.obs.shape[1],
        obs_size=first.obs.shape[2],
        state_size=first.state.shape[1],
        n_actions=first.avail_actions.shape[2],
        episode_limit=episode_limit,
        attrs=attrs,
    ) as writer:
        for i, episode in enumerate(episodes):
            writer.append(episode, None if probs is None else probs[i])
    return Path(path)


def card_path(path: str | os.PathLike) -> Path:
    """Where the dataset card of `path` goes: data/3s5z_medium.h5 -> data/3s5z_medium.card.json."""
    path = Path(path)
    return path.with_name(path.stem + ".card.json")
