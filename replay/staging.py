"""What the dataset writers share (dataset_writer.py's HDF5 files, vault.py's vault directories): each
builds its output under a temporary name beside the destination and renames it into place when
complete, so nobody ever reads a half-written dataset, and removes it when the writing fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

W = TypeVar("W", bound="StagedWriter")


class StagedWriter:
    """A writer of `path` that builds it at `self._tmp`: a new file (with `directory`, a directory)
    beside it named `.NAME.XXXXXXXX.tmp`, made on construction, missing parent directories too.
    Subclasses rename it onto `path` in `close()` and remove it in `abort()`; as a context manager
    the writer closes when its block ends and aborts when the block raises."""

    def __init__(self, path: str | os.PathLike, *, directory: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix, parent = f".{self.path.name}.", self.path.parent
        if directory:
            self._tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
        else:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
            os.close(fd)
            self._tmp = Path(tmp)

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: W) -> W:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
