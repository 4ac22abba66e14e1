"""Where a study's trials run: local child processes (`LocalPool`) or Ray tasks (`RayPool`), each
trial a Python process of its own; one study per output directory at a time (`sweep_lock`).

A pool is given the arguments of that Python for each trial (`-m MODULE ...`, by the study) and
runs them with the interpreter of the machine the trial runs on. It tells the loop that schedules the
trials (`deploy/studies/runner.py`) how many more it may start (`slots`) and which have ended, with
their exit status (`wait`). A trial's output is appended to `logs/<name>.log` in the output
directory, or, for a pool made with `logs=False`, goes to this process's own output.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deploy.studies.sweep import ReproduceError

LOCK_FILE = ".sweep.lock"
RAY_TASK_ENV = "OVMSE_RAY_TASK_ID"
PR_SET_PDEATHSIG = 1

Command = Callable[[str], list[str]]  # a trial's name -> the arguments of the Python that runs it


def _libc_prctl():
    """libc's prctl, looked up once in the parent: between fork and exec a child should do no more
    than call it (loading a library there can deadlock on a lock another thread held)."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def die_with_parent() -> None:
    """Runs in a child between fork and exec: ask the kernel (Linux) for SIGTERM when the process
    that started it dies, even by SIGKILL, which leaves it no chance to stop its children itself: a
    killed orchestrator leaves no service running as an orphan, a killed sweep no trial writing into
    its output directory. Elsewhere it does nothing, and children may outlive a killed parent.
    (The kernel sends it when the thread that started the child ends: start long-lived children
    from a thread that lives as long as they should, e.g. the main thread.)"""
    if _PRCTL is not None:
        with contextlib.suppress(Exception):
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def trial_env() -> dict[str, str]:
    """The child's environment: this process's, with the project importable and one BLAS thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def log_path(out: Path, name: str) -> Path:
    """Where a trial's output goes: logs/<name, slashes as __>.log in the output directory."""
    return Path(out) / "logs" / f"{name.replace('/', '__')}.log"


def run_logged(args: list[str], log: str) -> int:
    """Run one trial (`python *args`) in a child process, its output appended to `log`; the exit
    status. A Ray task: the trial's done.json names the task."""
    env = trial_env()
    with contextlib.suppress(Exception):  # inside a Ray task: say which, for done.json
        import ray

        env[RAY_TASK_ENV] = ray.get_runtime_context().get_task_id() or ""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream:
        return subprocess.call(
            [sys.executable, *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )


class LocalPool:
    """Trials as local child processes, `jobs` at a time."""

    def __init__(self, out: Path, jobs: int, command: Command, logs: bool = True):
        self.out, self.jobs, self.command, self.logs = out, jobs, command, logs
        self.running: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}

    @property
    def slots(self) -> int:
        return self.jobs - len(self.running)

    @property
    def parallelism(self) -> int:
        return self.jobs

    def log_path(self, name: str) -> Path | None:
        return log_path(self.out, name) if self.logs else None

    def submit(self, name: str) -> None:
        log = None
        if self.logs:
            path = log_path(self.out, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            log = self._logs[name] = open(path, "a")
        self.running[name] = subprocess.Popen(
            [sys.executable, *self.command(name)],
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            env=trial_env(),
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
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
            if name in self._logs:
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
    """Trials as Ray tasks (`threads` CPUs each; a fraction of a GPU for learner trials where the
    cluster has GPUs). Each task runs the trial in a child process on its node and writes
    into the output directory, which must be the same shared path on every node."""

    def __init__(self, out: Path, address: str, jobs: int, threads: int, command: Command):
        import ray

        self.ray = ray
        self.out, self.threads, self.command = out, threads, command
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

    def log_path(self, name: str) -> Path:
        return log_path(self.out, name)

    def submit(self, name: str) -> None:
        learner = name.startswith(("pretrain/", "online/", "datasets/behaviour"))
        gpu = 0.25 if self.gpus and learner else 0
        task = self.task.options(num_cpus=self.threads, num_gpus=gpu)
        ref = task.remote(self.command(name), str(log_path(self.out, name)))
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


# --- one study per output directory ----------------------------------------------------------------


@contextlib.contextmanager
def sweep_lock(out: Path):
    """One sweep per output directory at a time."""
    path = out / LOCK_FILE
    if path.exists():
        pid = None
        with contextlib.suppress(ValueError, OSError):  # unreadable: a stale lock, taken over
            pid = int(path.read_text())
        if pid is not None and pid != os.getpid() and _alive(pid):
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
