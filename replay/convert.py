"""`ovmse dataset convert`: HDF5 dataset file <-> Flashbax vault, either way, checked on the way.

HDF5 -> vault -> HDF5 gives back the same arrays and attributes for files in our layout (CFCQL files
come back normalised as replay/dataset.py reads them: the final row's action zeroed). Both
directions write under a temporary name and rename when complete; an existing destination is
refused unless `overwrite`, and then replaced only once the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from replay.dataset import (
    BATTLE_WON_ATTR,
    SCHEMA_ATTR,
    DatasetError,
    MapLayout,
    dataset_layout,
    iter_episodes_with_probs,
    open_dataset,
)
from replay.dataset_writer import DatasetWriter
from replay.vault import METADATA_FILE, VaultWriter, is_vault

VAULT_SUFFIX = ".vlt"


def vault_destination(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Where a vault made from `src` goes: `dst` itself (`NAME.vlt/UID`), or `dst/<src stem>` when
    `dst` is only `NAME.vlt` (OG-MARL names a vault's datasets, e.g. 3m.vlt/Good)."""
    dst = Path(dst)
    return dst / Path(src).stem if dst.suffix == VAULT_SUFFIX else dst


def destination(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """The path `convert(src, dst)` writes: for a vault source the HDF5 file `dst`, for an HDF5
    source the vault `vault_destination(src, dst)`."""
    return Path(dst) if is_vault(src) else vault_destination(src, dst)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    expected: MapLayout | None = None,
    overwrite: bool = False,
) -> tuple[Path, int]:
    """Convert a vault to an HDF5 file or an HDF5 file to a vault (decided by `src`); returns the
    path written and the episodes converted. Raises DatasetError for a bad source, FileExistsError
    for a destination that exists (unless `overwrite`)."""
    target = destination(src, dst)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass --overwrite to replace it")
    if is_vault(src):
        if expected is None:
            with open_dataset(src) as view:
                ours = view.ours is not None
            if not ours:
                raise DatasetError(
                    src,
                    "map",
                    "needed to convert a vault that ovmse did not write (--map M): its episode limit "
                    "sets the file's time axis and tells time-limit ends from true ends",
                )
        return vault_to_hdf5(src, dst, expected)
    if target.exists():
        return _replace_vault(src, target, expected)
    return hdf5_to_vault(src, target, expected)


def _replace_vault(src, dst: Path, expected: MapLayout | None) -> tuple[Path, int]:
    """Write the vault beside `dst`, then swap it in: `dst` stays as it was if the conversion fails."""
    if not (dst / METADATA_FILE).is_file():
        raise DatasetError(dst, "file", "exists and is not a vault; not replacing it")
    staged = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".new", dir=dst.parent))
    staged.rmdir()  # the vault writer makes it
    written, episodes = hdf5_to_vault(src, staged, expected)
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(written, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst, episodes


def writer_sizes(layout) -> dict:
    """The sizes both writers take, from a dataset's layout."""
    return {
        "n_agents": layout.n_agents,
        "obs_size": layout.obs_size,
        "state_size": layout.state_size,
        "n_actions": layout.n_actions,
        "episode_limit": layout.episode_limit,
    }


def hdf5_to_vault(src, dst, expected: MapLayout | None = None) -> tuple[Path, int]:
    layout = dataset_layout(src, expected)
    with open_dataset(src) as h5:
        attrs = {k: v for k, v in h5.attrs.items() if k not in (BATTLE_WON_ATTR, SCHEMA_ATTR)}
    with VaultWriter(
        dst,
        **writer_sizes(layout),
        with_probs=layout.has_probs,
        attrs=attrs,
    ) as writer:
        for episode, probs in iter_episodes_with_probs(src, expected):
            writer.append(episode, probs)
    return Path(dst), writer.episodes


def vault_to_hdf5(src, dst, expected: MapLayout | None = None) -> tuple[Path, int]:
    layout = dataset_layout(src, expected)
    with open_dataset(src, expected) as view:
        attrs = {k: v for k, v in view.attrs.items() if k not in (BATTLE_WON_ATTR, SCHEMA_ATTR)}
    if Path(dst).is_dir():
        raise DatasetError(dst, "file", "is a directory; name the HDF5 file to write")
    with DatasetWriter(
        dst,
        **writer_sizes(layout),
        attrs={k: np.asarray(v) if isinstance(v, list) else v for k, v in attrs.items()},
    ) as writer:
        for episode, probs in iter_episodes_with_probs(src, expected):
            writer.append(episode, probs)
    return Path(dst), writer.episodes
