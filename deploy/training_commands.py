"""`ovmse train` and `ovmse pretrain`: their inputs checked before a run directory is made, then
the one-process trainer (deploy/single_process.py) or a distributed run (deploy/embedded.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import Config
from common.errors import InputError
from deploy.config_args import config_from_args
from deploy.preflight import check_dataset


def train(args: argparse.Namespace) -> int:
    """`ovmse train`: the one-process trainer (`--mode sync`, resumable), else a distributed run."""
    cfg = config_from_args(args)
    if args.mode != "sync" and args.resume:
        raise InputError("--resume: a distributed run resumes with `ovmse run --resume RUN_DIR`")
    if args.mode != "sync":
        from deploy.embedded import run_embedded

        return run_embedded(cfg)
    from deploy.single_process import train_sync

    if args.resume:  # the run's own configuration, and its directory
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "trainer.pt").is_file():
            raise InputError(f"--resume {run_dir}: no trainer state there (checkpoints/trainer.pt)")
        if args.config is None and (run_dir / "config.yaml").is_file():
            args.config = str(run_dir / "config.yaml")
            cfg = config_from_args(args)
        _check_training_dataset(cfg)
        result = train_sync(cfg, run_dir=run_dir, resume=True)
    else:
        _check_training_dataset(cfg)
        result = train_sync(cfg)
    print(
        f"done: final test win rate {result.final_win_rate:.3f}, return {result.final_return:.2f} "
        f"({result.updates} updates, {result.online_env_steps} online env steps)"
    )
    print(f"results in {result.run_dir}")
    return 0


def _check_training_dataset(cfg: Config) -> None:
    """`ovmse train`'s dataset, when the run reads one (a pre-training, or offline episodes mixed
    into the online batches)."""
    from learner.training import has_offline_phase

    if cfg.run.dataset is not None and (has_offline_phase(cfg) or cfg.replay.mixing_ratio > 0):
        check_dataset(cfg)


def pretrain(args: argparse.Namespace) -> int:
    """`ovmse pretrain`: the offline phase alone, on `--dataset` (else run.dataset)."""
    overrides = list(args.overrides or ())
    if args.dataset:
        overrides.insert(0, f"run.dataset={args.dataset}")
    args.overrides = overrides
    cfg = config_from_args(args)
    if cfg.run.dataset is not None:
        check_dataset(cfg, "--dataset" if args.dataset else "run.dataset")
    from deploy.single_process import pretrain

    try:
        pretrain(cfg)
    except ValueError as error:
        print(f"ovmse pretrain: {error}", file=sys.stderr)
        return 2
    return 0
