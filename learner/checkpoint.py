"""Learner checkpoints: one file with everything a resumed learner needs.

The file holds `QMixLearner.state_dict()` (networks, targets, OVM's offline memory, the
behaviour-cloning policy, optimizers, counters, the CQL sampler's RNG) plus the caller's own
counters (`extra`: phase, environment steps, episodes seen, ... as plain values). A resumed learner's
next update is exactly the one the uninterrupted learner would have made, given the same batch.

Writes go to a temporary file in the same directory, then `os.replace`, so a crash never leaves a
half-written checkpoint. Reads use `torch.load(..., weights_only=True)`: tensors and plain
containers only, never arbitrary unpickling.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from learner.learning import QMixLearner


def save_checkpoint(
    learner: QMixLearner, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the learner's state (and `extra`) to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"learner": learner.state_dict(), "extra": dict(extra or {})}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(learner: QMixLearner, path: str | os.PathLike) -> dict[str, Any]:
    """Restore `learner` (built with the same env info and config) from `path`; returns `extra`."""
    payload = torch.load(Path(path), map_location=learner.device, weights_only=True)
    learner.load_state_dict(payload["learner"])
    return payload.get("extra", {})
