"""The one-process trainer's own checkpoint (checkpoints/trainer.pt): everything its online phase
needs to go on exactly where it stopped, so that a killed trial resumes instead of starting again.

It holds, as tensors and plain values (`common/snapshot.py`; read with `weights_only=True`): the
learner's state, the in-process replay's online episodes and generator, both rollout workers
(battles mid-episode, partial episodes, GRU states, exploration generator, weight versions), the
probe episodes, the loop's clocks (env steps, episodes, the next evaluation, the weight version),
the recent training episodes, and the size of every log file when it was taken. A resumed run
first cuts its logs back to those sizes, so the records written after the checkpoint and before the
stop are not there twice. Written atomically; taken only right after an evaluation, and taking it
changes nothing in the run, so a run that resumes ends with the evaluations of one that did not stop.

Offline pre-training (`ovmse pretrain`, a sweep's pre-training trials) keeps its own state the same
way in checkpoints/pretrain.pt: the learner, the offline sampler's generator, the evaluator and the
updates done, taken right after each offline evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common.atomic_files import atomic_path
from common.errors import CheckpointError

KIND = "ovmse-trainer-state"
FORMAT = 1
FILE = "trainer.pt"
PRETRAIN_FILE = "pretrain.pt"
KINDS = {FILE: KIND, PRETRAIN_FILE: "ovmse-pretrain-state"}  # a file read as the other is refused
LOG_DIRS = ("tensorboard",)  # besides the run directory's own *.jsonl and *.csv


def trainer_state_path(run_dir: str | os.PathLike, file: str = FILE) -> Path:
    return Path(run_dir) / "checkpoints" / file


def log_sizes(run_dir: str | os.PathLike) -> dict[str, int]:
    """The size of every log file of the run (relative path -> bytes)."""
    run_dir = Path(run_dir)
    files = [*run_dir.glob("*.jsonl"), *run_dir.glob("*.csv")]
    for name in LOG_DIRS:
        files += [p for p in (run_dir / name).rglob("*") if p.is_file()]
    return {str(p.relative_to(run_dir)): p.stat().st_size for p in files}


def cut_logs_back(run_dir: str | os.PathLike, sizes: dict[str, int]) -> None:
    """Truncate each log file to its size in `sizes`, and remove log files that are not in it."""
    run_dir = Path(run_dir)
    for name, now in log_sizes(run_dir).items():
        path = run_dir / name
        if name not in sizes:
            path.unlink()
        elif now > sizes[name]:
            os.truncate(path, sizes[name])


def save_trainer_state(
    run_dir: str | os.PathLike, state: dict[str, Any], map_name: str, file: str = FILE
) -> Path:
    import torch  # here, not at the top: `ovmse --help` and the sweep's planning stay light

    path = trainer_state_path(run_dir, file)
    payload = {"kind": KINDS[file], "format": FORMAT, "map": map_name, "logs": log_sizes(run_dir), **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_trainer_state(run_dir: str | os.PathLike, map_name: str, file: str = FILE) -> dict[str, Any] | None:
    """The run's trainer state (or with `file=PRETRAIN_FILE` its pre-training state), or None when
    it has none. Raises CheckpointError for a file that is not one, or one of another map."""
    import torch

    path = trainer_state_path(run_dir, file)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same answer
        raise CheckpointError(path, f"not a trainer state ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KINDS[file]:
        raise CheckpointError(path, "not a trainer state" if file == FILE else "not a pre-training state")
    if payload.get("format") != FORMAT:
        raise CheckpointError(path, f"trainer state format {payload.get('format')!r} is not {FORMAT}")
    if payload.get("map") != map_name:
        raise CheckpointError(path, f"a trainer state of map {payload.get('map')}, not {map_name}")
    return payload
