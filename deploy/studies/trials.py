"""One trial of a reproduce sweep, run in this process (an online or pre-training one resumes from
its saved state), and the command that runs it in a child process:

    python -m deploy.studies.trials OUT NAME [--threads N]

runs the trial NAME of the sweep stored in OUT (`sweep.json`) and writes its `done.json` last. The
pools (`deploy/studies/pools.py`) start that command, locally or as a Ray task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from pathlib import Path

from common.atomic_files import write_json
from deploy.studies.pools import RAY_TASK_ENV
from deploy.studies.sweep import (
    DONE_FILE,
    Sweep,
    Trial,
    dataset_path,
    is_done,
    load_sweep,
    plan,
    read_done,
    read_records,
    trial_config,
)
from deploy.trainer_state import FILE, PRETRAIN_FILE, trainer_state_path

ENTRY_POINT = "deploy.studies.trials"


def trial_args(out: Path, name: str, threads: int) -> list[str]:
    """The arguments of the Python process that runs one trial of the sweep in `out` (a pool's
    command)."""
    return ["-m", ENTRY_POINT, str(out), name, "--threads", str(threads)]


def execute_trial(out: Path, name: str, threads: int = 1) -> dict:
    """Run one trial of the sweep stored in `out`: an online trial that an earlier attempt left with
    a trainer state goes on from it; otherwise whatever an unfinished attempt left in its directory
    is removed first. Writes done.json last (then drops the trial's resume state) and returns it."""
    import torch

    torch.set_num_threads(threads)
    sweep = load_sweep(out)
    trial = {t.name: t for t in plan(sweep)}[name]
    missing = [n for n in trial.needs if not is_done(out, n)]
    if missing:
        raise RuntimeError(f"trial {name} needs {', '.join(missing)}, which have not finished")
    run_dir = out / name
    # An online or pre-training trial stopped part-way goes on from its saved state; anything else
    # starts again.
    state_file = {"online": FILE, "pretrain": PRETRAIN_FILE}.get(trial.kind)
    if not (state_file and trainer_state_path(run_dir, state_file).is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
    began, cpu_began = time.time(), time.process_time()
    summary = RUNNERS[trial.kind](out, sweep, trial, run_dir)
    done = {
        "trial": name,
        "kind": trial.kind,
        "seed": trial.seed,
        "method": trial.method,
        "algorithm": trial.algorithm,
        "seconds": round(time.time() - began, 1),
        "cpu_seconds": round(time.process_time() - cpu_began, 1),  # this process, all threads
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ray_task_id": os.environ.get(RAY_TASK_ENV),  # set when a Ray task ran this trial
        **summary,
    }
    write_json(run_dir / DONE_FILE, done)
    if state_file:  # a finished trial is never resumed (a sweep refuses a larger budget): its
        # resume state, up to about 1 GB on 3s5z, would only fill the disk
        trainer_state_path(run_dir, state_file).unlink(missing_ok=True)
    return done


def within(out: Path, path: str | Path) -> str:
    """`path` relative to the sweep's output directory when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def _run_behaviour(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    """QMIX from scratch until the stated test win rate; its FIFO buffer at the end is the
    medium-replay dataset."""
    from deploy.single_process import train_sync
    from replay.dataset import inspect_dataset
    from replay.dataset_writer import card_path

    cfg = trial_config(out, sweep, trial)
    target = sweep.budget.behaviour_win_rate
    target_return = sweep.budget.behaviour_return

    def medium_level(record: dict) -> bool:
        return record["win_rate"] >= target or (
            target_return is not None and record["return"] >= target_return
        )

    replay_file = out / "datasets" / f"{sweep.map_name}_medium_replay.h5"
    result = train_sync(
        cfg,
        run_dir=run_dir,
        progress=False,
        final_test_episodes=0,
        dump_replay_to=replay_file,
        stop_when=medium_level,
    )
    last = read_records(run_dir, "eval")[-1]
    level = {
        "behaviour_env_steps": result.online_env_steps,
        "behaviour_test_win_rate": last["win_rate"],
        "behaviour_test_return": last["return"],
        "behaviour_test_episodes": last.get("episodes", cfg.actor.test_episodes),
        "behaviour_target_win_rate": target,
        "behaviour_target_return": target_return,
        "behaviour_reached_target": medium_level(last),
    }
    attrs = {"map_name": sweep.map_name, "policy": "qmix-replay", "kind": "medium_replay", **level}
    card = inspect_dataset(replay_file).card(**attrs)
    write_json(card_path(replay_file), {**card, "path": within(out, card["path"])})
    return {
        **level,
        "checkpoint": str(run_dir / "checkpoints" / "final.pt"),
        "medium_replay": str(replay_file),
    }


def _run_dataset(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    """Medium: greedy rollouts of the behaviour policy, with a card naming its level."""
    from deploy.recipes import collect_with_checkpoint
    from replay.dataset_writer import card_path

    run_dir.mkdir(parents=True, exist_ok=True)
    behaviour = read_done(out, "datasets/behaviour")
    cfg = trial_config(out, sweep, Trial("datasets/behaviour", "behaviour"))
    path = dataset_path(out, sweep)
    summary = collect_with_checkpoint(
        cfg, behaviour["checkpoint"], str(path), sweep.budget.dataset_episodes, epsilon=0.0
    )
    card = json.loads(card_path(path).read_text())
    card.update({k: v for k, v in behaviour.items() if k.startswith("behaviour_")}, kind="medium")
    # Paths relative to the sweep's --out, so a card copied elsewhere names no machine's directory.
    card.update(path=within(out, card["path"]), policy=f"checkpoint:{within(out, behaviour['checkpoint'])}")
    write_json(card_path(path), card)
    return {"dataset": str(path), "episodes": summary.episodes, "win_rate": summary.win_rate}


def _run_pretrain(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    from deploy.single_process import pretrain

    result = pretrain(trial_config(out, sweep, trial), run_dir=run_dir, progress=False, resume=True)
    return {"win_rate": result.final_win_rate, "return": result.final_return, "updates": result.updates}


def _run_online(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    from deploy.single_process import train_sync

    result = train_sync(trial_config(out, sweep, trial), run_dir=run_dir, progress=False, resume=True)
    return {
        "final_win_rate": result.final_win_rate,
        "final_return": result.final_return,
        "offline_win_rate": result.offline_win_rate,
        "updates": result.updates,
        "online_env_steps": result.online_env_steps,
    }


RUNNERS = {
    "behaviour": _run_behaviour,
    "dataset": _run_dataset,
    "pretrain": _run_pretrain,
    "online": _run_online,
}


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.studies.trials OUT NAME`: one trial, in this process."""
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_POINT}")
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    done = execute_trial(Path(args.out), args.name, args.threads)
    print(f"trial {args.name} done: {json.dumps(done)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
