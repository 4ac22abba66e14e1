"""The one error every dataset reader raises (HDF5 files and Flashbax vaults alike)."""

from __future__ import annotations

import os


class DatasetError(ValueError):
    """A dataset file problem as one line: `FILE: [episode I: ]FIELD: DETAIL`.

    `field` is the HDF5 key, or the vault leaf, at fault ("file" when the file itself cannot be
    read); `episode` the index of the first bad episode, when the problem is in one."""

    def __init__(self, path: str | os.PathLike, field: str, detail: str, episode: int | None = None):
        self.path = str(path)
        self.field = field
        self.detail = detail
        self.episode = episode
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"episode {self.episode}: " if self.episode is not None else ""
        return " ".join(f"{self.path}: {where}{self.field}: {self.detail}".splitlines())
