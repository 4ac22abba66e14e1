"""`ovmse reproduce`: the paper's comparison on one task, every method over several seeds.

    ovmse reproduce --map 2s3z --dataset-kind medium --methods ovmse,switch_cql,macql,macal_ql,qmix \
        --seeds 5 --online-steps 100000 [--mixing-ratios 0.0,0.1,0.3] [--jobs 2 | --ray ADDRESS] [--out DIR]

A sweep is a small graph of trials, each a directory under the output directory:

    behaviour                  QMIX from scratch until a stated test win rate (the "medium" level);
                               its replay buffer at the end is the medium-replay dataset
    dataset                    medium = greedy rollouts of that policy (CFCQL's layout, with a card)
    pretrain/<loss>_s<seed>    one offline pre-training per (dataset, offline loss, seed), shared by
                               every method whose offline phase is that loss
    online/<algorithm>_s<seed> each method fine-tuned from its seed's pre-training with its preset
                               (qmix from scratch, with its own schedule), one-process trainer;
                               offline methods (inspo, bc, qmix_cql, cfcql) have none: their
                               pre-training, scored greedily at its end, is their result

A trial is finished when its directory holds `done.json` (written last, atomically). Rerunning the
same command skips finished trials and starts unfinished ones again from their start point (the
shared pre-training checkpoint for an online trial: the one-process trainer keeps no mid-run
checkpoint, so an online trial's own progress is redone). Trials run as local processes, `--jobs`
at a time, or as Ray tasks (`--ray ADDRESS`, `--ray local` for an instance on this machine); a Ray
task writes into the output directory, which every node must see at the same path (shared storage).
After each online trial and pre-training the results are written: results.json (marl-eval's raw format),
table.md and curves_*.png (deploy/reproduce_report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic_files import write_json
from common.config import METHOD_NAMES, Config, resolve_config
from common.config.presets import METHODS, map_hyperparameters, preset

DEFAULT_METHODS = ("ovmse", "switch_cql", "macql", "macal_ql", "qmix")
SWEEP_FILE = "sweep.json"
DONE_FILE = "done.json"
LOCK_FILE = ".sweep.lock"
PROGRESS_EVERY_S = 30.0
QUIET_EVERY_S = 300.0
RAY_TASK_ENV = "OVMSE_RAY_TASK_ID"


class ReproduceError(ValueError):
    """Bad input to `ovmse reproduce`; the message names the flag."""


@dataclass(frozen=True)
class Budget:
    """What a sweep spends besides the online budget. The defaults fit the 2-core check
    (`--map 3m --methods ovmse,switch_cql --seeds 2 --online-steps 20000`) in a few minutes; the
    paper's values are in the comments."""

    behaviour_win_rate: float = 0.5  # QMIX from scratch stops at this test win rate ("medium") ...
    behaviour_return: float | None = None  # ... or at this test return, when given (CFCQL's 2s3z
    # medium data has mean return 12.76)
    behaviour_max_steps: int = 200_000  # ... or here, whatever it reached
    behaviour_eval_interval: int = 5_000
    behaviour_epsilon_anneal_steps: int = 50_000  # PyMARL2: 100k over a 2M run
    dataset_episodes: int = 5_000  # medium: greedy rollouts; medium-replay: buffer size (paper: 5,000)
    offline_updates: int = 500  # pre-training updates (project default 2,000 of batch 128)
    batch_size: int = 32  # episodes per gradient step, offline and online (paper: 128)
    cql_sampler: str = "available_only"  # see docs/learner.md: the all-actions estimator at 0.05 left
    # short pre-trainings on lite 2s3z at zero wins
    evals: int = 10  # online evaluations over the budget (paper: every 10k of 1M = 100)
    test_episodes: int = 32  # per online evaluation (paper: 32)
    final_test_episodes: int = 640  # final policy (paper: 640)
    drop_window: int = 3  # the offline-to-online drop looks at the first k online evaluations
    target_win_rate: float = 0.5  # the table's "env steps to reach" this test win rate
    bootstrap_reps: int = 2000


@dataclass(frozen=True)
class Sweep:
    map_name: str
    dataset_kind: str
    methods: tuple[str, ...]
    seeds: int
    online_steps: int
    mixing_ratios: tuple[float, ...] | None = None  # None: each preset's own
    dataset: str | None = None  # a given dataset file; None: made the paper's way
    overrides: tuple[str, ...] = ()  # --set, applied to every trial
    budget: Budget = field(default_factory=Budget)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Sweep:
        data = dict(data)
        data["budget"] = Budget(**data.get("budget", {}))
        data["methods"] = tuple(data["methods"])
        data["overrides"] = tuple(data.get("overrides", ()))
        if data.get("mixing_ratios") is not None:
            data["mixing_ratios"] = tuple(data["mixing_ratios"])
        return cls(**data)

    # Fields whose change makes finished trials mean something else.
    FIXED = ("map_name", "dataset_kind", "online_steps", "dataset", "overrides", "budget")


@dataclass(frozen=True)
class Trial:
    name: str  # also its directory under the output directory
    kind: str  # "behaviour" | "dataset" | "pretrain" | "online"
    seed: int = 0
    method: str | None = None  # online: the method; pretrain: a method whose offline phase this is
    algorithm: str | None = None  # online: its label in the results
    mixing_ratio: float | None = None  # online: None = the preset's
    needs: tuple[str, ...] = ()


# --- the plan --------------------------------------------------------------------------------


def dataset_path(out: Path, sweep: Sweep) -> Path:
    if sweep.dataset:
        return Path(sweep.dataset)
    return out / "datasets" / f"{sweep.map_name}_{sweep.dataset_kind}.h5"


def offline_key(map_name: str, dataset_kind: str, method: str) -> str:
    """The offline loss a method pre-trains with ("cql", "cfcql", "cql_calql", ...): methods with the
    same key share a pre-training."""
    learner = preset(map_name, dataset_kind, method)["learner"]
    if learner.get("algorithm") == "inspo":
        return "inspo" if METHODS[method].policy_updates else "bc"
    return learner["offline_cql"] + ("_calql" if learner.get("calql_floor") else "")


def algorithm_label(method: str, ratio: float | None) -> str:
    return method if ratio is None else f"{method}_m{ratio:g}"


def plan(sweep: Sweep) -> list[Trial]:
    """Every trial of the sweep, each after the trials it needs."""
    trials: list[Trial] = []
    o2o = [m for m in sweep.methods if METHODS[m].offline_phase]
    data_needs: tuple[str, ...] = ()
    if o2o and not sweep.dataset:
        trials.append(Trial("datasets/behaviour", "behaviour"))
        data_needs = ("datasets/behaviour",)
        if sweep.dataset_kind == "medium":
            trials.append(Trial("datasets/medium", "dataset", needs=data_needs))
            data_needs = ("datasets/medium",)
    keys: dict[str, str] = {}
    for method in o2o:
        keys.setdefault(offline_key(sweep.map_name, sweep.dataset_kind, method), method)
    ratios: tuple[float | None, ...] = sweep.mixing_ratios or (None,)
    # Seed by seed, so that a sweep stopped part-way has whole seeds of every method.
    for seed in range(sweep.seeds):
        for key, method in keys.items():
            trials.append(Trial(f"pretrain/{key}_s{seed}", "pretrain", seed, method, needs=data_needs))
        for method in sweep.methods:
            if not METHODS[method].online_phase:  # an offline method: its pre-training is the trial
                continue
            if not METHODS[method].offline_phase:
                trials.append(Trial(f"online/{method}_s{seed}", "online", seed, method, method))
                continue
            key = offline_key(sweep.map_name, sweep.dataset_kind, method)
            for ratio in ratios:
                label = algorithm_label(method, ratio)
                needs = (f"pretrain/{key}_s{seed}",)
                trials.append(Trial(f"online/{label}_s{seed}", "online", seed, method, label, ratio, needs))
    return trials


def scaled(paper_steps: int, online_steps: int, paper_budget: int) -> int:
    """A schedule length of the paper's run, scaled to this budget (e.g. epsilon's 100k of 1M)."""
    return max(1, round(paper_steps * online_steps / paper_budget)) if paper_steps else 0


def trial_config(out: Path, sweep: Sweep, trial: Trial) -> Config:
    """The resolved configuration a trial runs with: the method's preset, the sweep's budget, the
    seed, then the sweep's --set overrides."""
    b = sweep.budget
    method = trial.method or "qmix"
    settings: dict[str, object] = {
        "run.seed": trial.seed,
        "env.seed": trial.seed,
        "run.run_dir": str(out / Path(trial.name).parent),
        "run.name": Path(trial.name).name,
        "run.log_interval_s": 60,
        "learner.batch_size": b.batch_size,
        "learner.cql_sampler": b.cql_sampler,
        "actor.test_episodes": b.test_episodes,
        "actor.final_test_episodes": b.final_test_episodes,
        "run.offline_eval_interval": max(1, b.offline_updates // 2),
    }
    if trial.kind == "behaviour":
        settings.update(
            {
                "run.online_env_steps": b.behaviour_max_steps,
                "run.eval_interval_steps": b.behaviour_eval_interval,
                "actor.epsilon_anneal_steps": b.behaviour_epsilon_anneal_steps,
                "replay.online_capacity": b.dataset_episodes,
                "actor.final_test_episodes": 0,
            }
        )
    else:
        paper = preset(sweep.map_name, sweep.dataset_kind if method != "qmix" else None, method)
        paper_budget = map_hyperparameters(sweep.map_name).online_env_steps
        settings.update(
            {
                "run.online_env_steps": sweep.online_steps,
                "run.eval_interval_steps": max(1, sweep.online_steps // b.evals),
                "actor.epsilon_anneal_steps": scaled(
                    paper["actor"]["epsilon_anneal_steps"], sweep.online_steps, paper_budget
                ),
            }
        )
        anneal = paper["learner"].get("memory_anneal_steps", 0)
        if anneal:
            settings["learner.memory_anneal_steps"] = scaled(anneal, sweep.online_steps, paper_budget)
        if not METHODS[method].online_phase:  # offline methods keep their budget of 0
            del settings["run.online_env_steps"], settings["run.eval_interval_steps"]
        if METHODS[method].offline_phase:
            settings["run.dataset"] = str(dataset_path(out, sweep))
            if METHODS[method].policy_updates:  # bc: behaviour cloning only
                settings["learner.offline_updates"] = b.offline_updates
    if trial.kind == "online" and trial.needs:
        settings["run.init_checkpoint"] = str(out / trial.needs[0] / "checkpoints" / "offline.pt")
    if trial.mixing_ratio is not None:
        settings["replay.mixing_ratio"] = trial.mixing_ratio
    overrides = [f"{k}={v}" for k, v in settings.items()] + list(sweep.overrides)
    kind = None if method == "qmix" else sweep.dataset_kind
    return resolve_config(map_name=sweep.map_name, dataset=kind, method=method, overrides=overrides)


# --- one trial -------------------------------------------------------------------------------


def is_done(out: Path, name: str) -> bool:
    return (out / name / DONE_FILE).is_file()


def read_done(out: Path, name: str) -> dict:
    return json.loads((out / name / DONE_FILE).read_text())


def execute_trial(out: Path, name: str, threads: int = 1) -> dict:
    """Run one trial of the sweep stored in `out` from its start: whatever an earlier, unfinished
    attempt left in its directory is removed first. Writes done.json last and returns it."""
    import torch

    torch.set_num_threads(threads)
    sweep = load_sweep(out)
    trial = {t.name: t for t in plan(sweep)}[name]
    missing = [n for n in trial.needs if not is_done(out, n)]
    if missing:
        raise RuntimeError(f"trial {name} needs {', '.join(missing)}, which have not finished")
    run_dir = out / name
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
    return done


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
    last = _records(run_dir, "eval")[-1]
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
    write_json(card_path(replay_file), inspect_dataset(replay_file).card(**attrs))
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
    write_json(card_path(path), card)
    return {"dataset": str(path), "episodes": summary.episodes, "win_rate": summary.win_rate}


def _run_pretrain(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    from deploy.single_process import pretrain

    result = pretrain(trial_config(out, sweep, trial), run_dir=run_dir, progress=False)
    return {"win_rate": result.final_win_rate, "return": result.final_return, "updates": result.updates}


def _run_online(out: Path, sweep: Sweep, trial: Trial, run_dir: Path) -> dict:
    from deploy.single_process import train_sync

    result = train_sync(trial_config(out, sweep, trial), run_dir=run_dir, progress=False)
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


def _records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]


# --- the sweep file and its lock ---------------------------------------------------------------


def load_sweep(out: Path) -> Sweep:
    return Sweep.from_json(json.loads((out / SWEEP_FILE).read_text()))


FLAG_OF = {
    "map_name": "--map",
    "dataset_kind": "--dataset-kind",
    "online_steps": "--online-steps",
    "dataset": "--dataset",
    "overrides": "--set",
    "budget": "the budget flags",
}


def store_sweep(out: Path, sweep: Sweep) -> None:
    """Write the sweep's definition; refuse one whose finished trials would mean something else."""
    path = out / SWEEP_FILE
    if path.exists():
        old = load_sweep(out)
        for name in Sweep.FIXED:
            if getattr(old, name) != getattr(sweep, name):
                raise ReproduceError(
                    f"{FLAG_OF[name]}: {getattr(sweep, name)!r} differs from the sweep already in {out} "
                    f"({getattr(old, name)!r}); rerun with the same values or choose another --out"
                )
    write_json(path, sweep.to_json())


@contextlib.contextmanager
def sweep_lock(out: Path):
    """One sweep per output directory at a time."""
    path = out / LOCK_FILE
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int(path.read_text())
            if pid != os.getpid() and _alive(pid):
                raise ReproduceError(f"--out {out}: another sweep (pid {pid}) is running there")
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- where trials run ----------------------------------------------------------------------------


def trial_command(out: Path, name: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "deploy.reproduce", "trial", str(out), name, "--threads", str(threads)]


def trial_env() -> dict[str, str]:
    """The child's environment: this process's, with the project importable and one BLAS thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent() -> None:
    """In a trial's child process (Linux): end it when the process that started it ends, even by
    SIGKILL, so that a killed sweep leaves no trial writing into the output directory."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_logged(out: str, name: str, threads: int) -> int:
    """Run one trial in a child process, its output appended to logs/<name>.log; the exit status."""
    env = trial_env()
    with contextlib.suppress(Exception):  # inside a Ray task: say which, for done.json
        import ray

        env[RAY_TASK_ENV] = ray.get_runtime_context().get_task_id() or ""
    log_path = Path(out) / "logs" / f"{name.replace('/', '__')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        return subprocess.call(
            trial_command(Path(out), name, threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


class LocalPool:
    """Trials as local child processes, `jobs` at a time."""

    def __init__(self, out: Path, jobs: int, threads: int):
        self.out, self.jobs, self.threads = out, jobs, threads
        self.running: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}

    @property
    def slots(self) -> int:
        return self.jobs - len(self.running)

    @property
    def parallelism(self) -> int:
        return self.jobs

    def submit(self, name: str) -> None:
        log_path = self.out / "logs" / f"{name.replace('/', '__')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
        self._logs[name] = log
        self.running[name] = subprocess.Popen(
            trial_command(self.out, name, self.threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=trial_env(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            ended = [(n, p.poll()) for n, p in self.running.items() if p.poll() is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        for name, _ in ended:
            del self.running[name]
            self._logs.pop(name).close()
        return [(n, int(rc)) for n, rc in ended]

    def close(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for log in self._logs.values():
            log.close()


class RayPool:
    """Trials as Ray tasks (one CPU each; a fraction of a GPU for learner trials where the cluster
    has GPUs). Each task runs the trial in a child process on its node and writes into the output
    directory, which must be the same shared path on every node."""

    def __init__(self, out: Path, address: str, jobs: int, threads: int):
        import ray

        self.ray = ray
        self.out, self.threads = out, threads
        # Workers import this module: on a local instance they inherit this process's environment;
        # on a cluster every node needs the project installed (the project's image does that).
        if address == "local":
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.gpus = float(resources.get("GPU", 0))
        self.task = ray.remote(run_logged)
        self.running: dict = {}  # object ref -> trial name

    @property
    def slots(self) -> int:
        return max(0, self.cpus - len(self.running))

    @property
    def parallelism(self) -> int:
        return self.cpus

    def submit(self, name: str) -> None:
        learner = name.startswith(("pretrain/", "online/", "datasets/behaviour"))
        gpu = 0.25 if self.gpus and learner else 0
        ref = self.task.options(num_cpus=self.threads, num_gpus=gpu).remote(str(self.out), name, self.threads)
        self.running[ref] = name

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        if not self.running:
            time.sleep(min(timeout, 0.2))
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        ended = []
        for ref in ready:
            name = self.running.pop(ref)
            try:
                rc = int(self.ray.get(ref))
            except Exception as error:  # a task that died with its worker
                print(f"reproduce: Ray task for {name} failed: {error}", file=sys.stderr, flush=True)
                rc = 1
            ended.append((name, rc))
        return ended

    def close(self) -> None:
        for ref in self.running:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.ray.shutdown()


# --- the sweep -----------------------------------------------------------------------------------


@dataclass
class Progress:
    """The whole sweep's progress line: trials done / running / left and an ETA from the mean time
    of finished trials of each kind."""

    trials: list[Trial]
    parallelism: int
    stream: object = None
    _last: float = 0.0

    def line(self, out: Path, running: set[str], failed: set[str]) -> str:
        done = [t for t in self.trials if is_done(out, t.name)]
        running = {n for n in running if not is_done(out, n)}  # finished, not yet reaped
        left = [t for t in self.trials if t.name not in running and not is_done(out, t.name)]
        seconds: dict[str, list[float]] = {}
        for t in done:
            with contextlib.suppress(OSError, ValueError, KeyError):
                seconds.setdefault(t.kind, []).append(float(read_done(out, t.name)["seconds"]))
        every = [s for v in seconds.values() for s in v]
        fallback = sum(every) / len(every) if every else None
        work = 0.0
        for t in left + [t for t in self.trials if t.name in running]:
            kind = seconds.get(t.kind)
            mean = sum(kind) / len(kind) if kind else fallback
            if mean is None:
                work = float("nan")
                break
            work += mean if t.name not in running else mean / 2
        eta = work / max(1, self.parallelism)
        eta_text = "ETA unknown" if eta != eta else f"ETA {_duration(eta)}"
        failed_text = f", {len(failed)} failed" if failed else ""
        return (
            f"reproduce: {len(done)}/{len(self.trials)} trials done, {len(running)} running, "
            f"{len(left)} left{failed_text}; {eta_text}"
        )

    def show(self, out: Path, running: set[str], failed: set[str], force: bool = False) -> None:
        """Print the line when something changed (`force`), or every PROGRESS_EVERY_S on a
        terminal and every QUIET_EVERY_S into a log file."""
        stream = self.stream or sys.stdout
        tty = stream.isatty()
        now = time.monotonic()
        if force or now - self._last >= (PROGRESS_EVERY_S if tty else QUIET_EVERY_S):
            self._last = now
            print(self.line(out, running, failed), file=stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_sweep(out: Path, sweep: Sweep, pool, report=None) -> int:
    """Run every unfinished trial of `sweep` on `pool`, each once its needs are done; call
    `report()` after each online trial and pre-training. 0 when all finished, 1 when any failed."""
    trials = plan(sweep)
    todo = [t for t in trials if not is_done(out, t.name)]
    print(
        f"reproduce: {len(trials)} trials, {len(trials) - len(todo)} already finished, {len(todo)} to run "
        f"(output in {out})",
        flush=True,
    )
    progress = Progress(trials, pool.parallelism)
    running: set[str] = set()
    failed: set[str] = set()
    progress.show(out, running, failed, force=True)
    try:
        while True:
            blocked = failed | {t.name for t in todo if any(n in failed for n in t.needs)}
            ready = [
                t
                for t in todo
                if t.name not in running
                and t.name not in blocked
                and not is_done(out, t.name)
                and all(is_done(out, n) for n in t.needs)
            ]
            for trial in ready[: pool.slots]:
                pool.submit(trial.name)
                running.add(trial.name)
            if not running:
                break
            for name, rc in pool.wait(timeout=5.0):
                running.discard(name)
                if rc != 0 or not is_done(out, name):
                    failed.add(name)
                    log = out / "logs" / f"{name.replace('/', '__')}.log"
                    print(
                        f"reproduce: trial {name} failed (exit {rc}); see {log}", file=sys.stderr, flush=True
                    )
                else:
                    done = read_done(out, name)
                    print(f"reproduce: {name} done in {_duration(done['seconds'])}", flush=True)
                    if report is not None and name.startswith(("online/", "pretrain/")):
                        _report_safely(report)
                progress.show(out, running, failed, force=True)
            progress.show(out, running, failed)
    finally:
        pool.close()
    if report is not None:
        _report_safely(report)
    progress.show(out, running, failed, force=True)
    unfinished = [t.name for t in todo if not is_done(out, t.name)]
    if unfinished:
        print(f"reproduce: {len(unfinished)} trials did not finish: {', '.join(unfinished)}", file=sys.stderr)
        return 1
    return 0


def _report_safely(report) -> None:
    try:
        report()
    except Exception as error:  # a report that fails must not stop the trials
        print(f"reproduce: writing the results failed: {error!r}", file=sys.stderr, flush=True)


# --- input ---------------------------------------------------------------------------------------


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise ReproduceError("--methods: give at least one method")
    for method in methods:
        if method not in METHOD_NAMES:
            raise ReproduceError(
                f"--methods: unknown method {method!r} (expected some of {', '.join(METHOD_NAMES)})"
            )
    if len(set(methods)) != len(methods):
        raise ReproduceError(f"--methods: a method is listed twice in {text!r}")
    return methods


def parse_ratios(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        ratios = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise ReproduceError(f"--mixing-ratios: expected numbers separated by commas, got {text!r}") from None
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ReproduceError(f"--mixing-ratios: each must be in [0, 1], got {text!r}")
    return ratios


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    if getattr(args, "method", None):
        raise ReproduceError(f"--method {args.method}: reproduce runs several; name them with --methods")
    if getattr(args, "config", None):
        raise ReproduceError(
            "--config: reproduce builds each trial from its preset; change fields with --set"
        )
    map_name = args.map or "3s5z"
    kind = args.dataset_kind or "medium"
    if kind not in ("medium", "medium_replay"):
        raise ReproduceError(f"--dataset-kind: expected medium or medium_replay, got {kind!r}")
    if args.seeds < 1:
        raise ReproduceError(f"--seeds must be at least 1, got {args.seeds}")
    online = (
        args.online_steps if args.online_steps is not None else map_hyperparameters(map_name).online_env_steps
    )
    if online < 1:
        raise ReproduceError(f"--online-steps must be at least 1, got {online}")
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be at least 1, got {args.jobs}")
    if args.dataset and not Path(args.dataset).is_file():
        raise ReproduceError(f"--dataset {args.dataset}: no such file")
    budget = Budget()
    changes = {k: v for k, v in (args.budget or {}).items() if v is not None}
    for name, value in changes.items():
        if (
            isinstance(value, int | float)
            and value <= 0
            and name not in ("behaviour_win_rate", "behaviour_return")
        ):
            raise ReproduceError(f"--{name.replace('_', '-')} must be positive, got {value}")
    budget = dataclasses.replace(budget, **changes)
    sweep = Sweep(
        map_name=map_name,
        dataset_kind=kind,
        methods=parse_methods(args.methods),
        seeds=args.seeds,
        online_steps=online,
        mixing_ratios=parse_ratios(args.mixing_ratios),
        dataset=str(Path(args.dataset).resolve()) if args.dataset else None,
        overrides=tuple(args.overrides or ()),
        budget=budget,
    )
    # Resolve every trial's configuration now, so a bad --set fails before anything runs.
    for trial in plan(sweep):
        trial_config(Path(args.out or "."), sweep, trial)
    return sweep


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "reproduce" / f"{sweep.map_name}_{sweep.dataset_kind}"


# The budget flags: (flag, Budget field, type, help).
BUDGET_FLAGS = (
    ("--behaviour-win-rate", "behaviour_win_rate", float, "test win rate QMIX from scratch is trained to"),
    ("--behaviour-return", "behaviour_return", float, "... or to this test return"),
    ("--behaviour-max-steps", "behaviour_max_steps", int, "env steps at most for that QMIX run"),
    ("--dataset-episodes", "dataset_episodes", int, "medium: greedy episodes; medium-replay: buffer size"),
    ("--offline-updates", "offline_updates", int, "pre-training updates"),
    ("--batch-size", "batch_size", int, "episodes per gradient step"),
    ("--evals", "evals", int, "online evaluations over the budget"),
    ("--test-episodes", "test_episodes", int, "greedy episodes per online evaluation"),
    ("--final-test-episodes", "final_test_episodes", int, "greedy episodes of the final policy"),
    ("--target-win-rate", "target_win_rate", float, "the table's 'env steps to reach' win rate"),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    b = Budget()
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="LIST",
        help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)}; also ovm, se, inspo_ovm; "
        "offline only: inspo, bc, qmix_cql, cfcql)",
    )
    parser.add_argument("--seeds", type=int, default=6, metavar="N", help="seeds per method (paper: 6)")
    parser.add_argument(
        "--online-steps",
        type=int,
        metavar="T",
        help="online env steps per trial (default: the paper's, 1M on 2s3z and 3s5z)",
    )
    parser.add_argument(
        "--mixing-ratios", metavar="LIST", help="e.g. 0.0,0.1,0.3: every offline-to-online method at each"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=2, metavar="J", help="local trials at once (default 2)")
    where.add_argument(
        "--ray", metavar="ADDRESS", help="run trials as Ray tasks on this cluster ('local': a local instance)"
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/reproduce/MAP_KIND)")
    parser.add_argument("--dataset", metavar="FILE", help="use this dataset instead of making one")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per trial")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write results.json, table.md and the curves of the sweep in --out from its finished trials",
    )
    for flag, name, kind, text in BUDGET_FLAGS:
        parser.add_argument(
            flag, type=kind, default=None, metavar="X", help=f"{text} (default {getattr(b, name)})"
        )


def main(args: argparse.Namespace, report: Callable[[Path, Sweep], object] | None = None) -> int:
    """The command: `report(out, sweep)` writes the results (deploy/reproduce_report.py's
    `write_report`, which the CLI passes in) after each online trial and at the end."""
    args.budget = {name: getattr(args, name, None) for _, name, _, _ in BUDGET_FLAGS}
    # SIGTERM ends the sweep like Ctrl-C: its running trials are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if getattr(args, "jobs", None) is None:
        args.jobs = 2
    try:
        if getattr(args, "report_only", False):
            return report_only(args, report)
        sweep = sweep_from_args(args)
        out = Path(args.out) if args.out else default_out(sweep)
        out.mkdir(parents=True, exist_ok=True)
        out = out.resolve()
        with sweep_lock(out):
            store_sweep(out, sweep)
            pool = (
                RayPool(out, args.ray, args.jobs, args.threads)
                if args.ray
                else LocalPool(out, args.jobs, args.threads)
            )
            status = run_sweep(out, sweep, pool, report=(lambda: report(out, sweep)) if report else None)
    except ReproduceError as error:
        print(f"ovmse reproduce: {error}", file=sys.stderr)
        return 2
    table = out / "table.md"
    if table.exists():
        print(table.read_text())
    print(f"results in {out}: results.json, table.md, curves_*.png")
    return status


def report_only(args: argparse.Namespace, report: Callable[[Path, Sweep], object] | None) -> int:
    """`--report-only`: the results of the sweep in --out from the trials finished so far (another
    sweep may be running there); no trial runs."""
    if not args.out:
        raise ReproduceError("--report-only needs --out DIR, the sweep's directory")
    out = Path(args.out)
    if not (out / SWEEP_FILE).is_file():
        raise ReproduceError(f"--out {out}: no sweep there ({SWEEP_FILE} is missing)")
    if report is not None:
        report(out, load_sweep(out))
    print((out / "table.md").read_text() if (out / "table.md").exists() else "no results yet")
    return 0


def _trial_main(argv: list[str]) -> int:
    """`python -m deploy.reproduce trial OUT NAME`: one trial, in this process."""
    parser = argparse.ArgumentParser(prog="python -m deploy.reproduce trial")
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    done = execute_trial(Path(args.out), args.name, args.threads)
    print(f"trial {args.name} done: {json.dumps(done)}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "trial":
        raise SystemExit(_trial_main(sys.argv[2:]))
    print("usage: ovmse reproduce ... (or python -m deploy.reproduce trial OUT NAME)", file=sys.stderr)
    raise SystemExit(2)
