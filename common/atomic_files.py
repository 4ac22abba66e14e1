"""Files written whole or not at all: into a temporary file next to the destination, renamed onto
it when complete, removed if anything fails. Readers never see a half-written file. The file that
lands gets the mode `open()` would have given it (0666 less the umask), not mkstemp's private 0600."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """Mode 0666 (a directory: 0777) less the umask, as `open()` and `mkdir()` create them; for the
    temporary files and directories of mkstemp and mkdtemp (0600, 0700) before they are renamed."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path next to `path`, renamed onto it when the block succeeds, removed if not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """JSON written to a temporary file and renamed into place."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    return path
