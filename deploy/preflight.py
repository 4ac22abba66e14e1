"""What a job's inputs must be before it starts anything: checked in the launching process, so a
bad dataset or checkpoint is one line naming its flag or field, not a child's crash, a retry loop or
a run directory made for nothing. The map itself is checked when the configuration is resolved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common.config import Config
from common.errors import InputError


def check_dataset(cfg: Config, flag: str = "run.dataset") -> None:
    """The offline dataset is there, readable and of the map's layout; `flag` is how it was given
    (`--dataset` or `run.dataset`)."""
    from replay.dataset import DatasetError, dataset_layout, expected_layout

    try:
        dataset_layout(cfg.run.dataset, expected_layout(cfg.env))
    except DatasetError as error:
        hint = " (make one with `ovmse dataset collect`)" if error.detail == "no such file" else ""
        separator = ":" if flag == "run.dataset" else ""
        raise InputError(f"{flag}{separator} {error}{hint}") from None
    except OSError as error:
        raise InputError(f"{flag}: {cfg.run.dataset}: cannot be read: {error.strerror or error}") from None


def check_init_checkpoint(cfg: Config) -> None:
    """The initial checkpoint loads into the learner the run would build (on the CPU: the
    launching process never needs a GPU): readable, of this map and network shape."""
    from common.errors import CheckpointError
    from deploy.builder import Builder

    on_cpu = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, device="cpu"))
    try:
        Builder(on_cpu).learner(cfg.run.init_checkpoint)
    except CheckpointError as error:
        raise InputError(f"run.init_checkpoint: {error}") from None


def preflight(cfg: Config, run_dir: Path | None = None) -> None:
    """`ovmse run`'s inputs: the dataset, and the initial checkpoint unless the run already has its
    own learner checkpoint (a resume). Raises InputError naming the field and the file."""
    if cfg.run.dataset:
        check_dataset(cfg)
    own = run_dir is not None and (run_dir / "checkpoints" / "learner.pt").is_file()
    if cfg.run.init_checkpoint and not own:
        check_init_checkpoint(cfg)
