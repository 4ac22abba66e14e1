"""`ovmse run`: the whole distributed system as local processes on one machine.

The orchestrator writes the resolved configuration (with free loopback ports filled in) into a
fresh run directory and starts, each as its own OS process running the same `ovmse` subcommands a
docker compose or Ray deployment runs: the replay server, the learner, `actor.num_actors` actors and
the evaluator. It shows one status line every `run.log_interval_s` seconds, and ends the run when
the learner has reached the budget and the evaluator has scored the final policy.

Before any process starts, the run's inputs are checked (`preflight`): the dataset (there,
readable, of the map's layout) and the initial checkpoint (readable, of the same map and network
shape); a problem is one line naming the field and the file, exit status 2, and no run directory.

Ctrl-C or SIGTERM stops everything cleanly: actors and evaluator first, then the learner (which
writes its checkpoint), then the replay server (which writes its own). The children run in their
own sessions, so a Ctrl-C in the terminal reaches only the orchestrator, which stops them in order;
and each gets SIGTERM from the kernel if the orchestrator itself dies, even by SIGKILL (Linux), so
none is left running as an orphan.

Supervision: a process that exits with an error is restarted after a delay that doubles from
RESTART_DELAY_S (capped at RESTART_DELAY_MAX_S); one that fails more than RESTART_LIMIT times within
RESTART_WINDOW_S ends the run with one line naming it. One that exits with a configuration error
(status 2) is never restarted: the run ends at once, and a run directory made for it that holds no
checkpoint is removed. Whenever a process fails, the last lines of its log go to stderr. A restarted
actor keeps its id and picks up the newest weights; the learner resumes from checkpoints/learner.pt;
the replay server restores both tables from its last checkpoint (every replay.checkpoint_interval_s,
in RUN_DIR/replay_checkpoint); the evaluator carries on from the evaluations logged. `ovmse run
--resume RUN_DIR` continues a stopped or crashed run the same way, on fresh ports; `--set KEY=VALUE`
may change the fields in RESUMABLE_KEYS there (a larger run.online_env_steps extends even a finished
run), recorded in the run's config.yaml; any other key is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.auth import TOKEN_ENV, new_token
from common.config import Config, write_config
from common.errors import InputError
from common.lifecycle import run_until_signal
from common.net import pick_free_port
from common.run_log import ProgressLine, fresh_run_dir, win_rate_text
from deploy.preflight import preflight
from deploy.resume_changes import resume_overrides
from deploy.studies.pools import die_with_parent

READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 30.0
FINAL_EVAL_TIMEOUT_S = 600.0
RESTART_LIMIT = 3  # failures of one process within RESTART_WINDOW_S before the run gives up
RESTART_WINDOW_S = 600.0
RESTART_DELAY_S = 1.0  # before the first restart; doubles with each failure in the window
RESTART_DELAY_MAX_S = 30.0
REPLAY_CHECKPOINTS = "replay_checkpoint"  # in the run directory, unless replay.checkpoint_dir is set
CONFIG_ERROR = 2  # a child's exit status for a configuration error: restarting it cannot help
LOG_TAIL_LINES = 10  # of a failed child's log, shown on stderr


def restart_delay(failures: int) -> float:
    """Seconds before restarting a process after its `failures`-th failure in the window."""
    return min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** max(failures - 1, 0))


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` non-empty lines of a log file (none if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def learner_thread_env(environ, num_actors: int) -> dict[str, str]:
    """The learner's torch threads on a machine it shares with its actors and the evaluator (one
    thread each): the cores they leave, at least one. Torch's default takes every core, and its
    threads then wait on cores the actors hold (on 2 cores, an update measured 0.35 s alone on one
    thread and 22-30 s on two beside the actors). A thread count the user set is kept."""
    if "OMP_NUM_THREADS" in environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores - num_actors - 1))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    expected_exit: bool = False
    failures: list[float] = field(default_factory=list)  # monotonic times of its failures
    restart_at: float | None = None  # when a failed process is due to start again
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # its own variables over the run's

    def start(self, env: dict) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, **self.env},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        self.starts += 1

    def failed(self, now: float) -> int:
        """Record a failure at `now`; returns the failures within the restart window."""
        self.failures = [t for t in self.failures if now - t < RESTART_WINDOW_S] + [now]
        return len(self.failures)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def tail(self) -> list[str]:
        return log_tail(self.log_path)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@dataclass
class EmbeddedRun:
    cfg: Config
    run_dir: Path
    children: dict[str, Child] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # the children's environment
    created: bool = False  # this run made the directory (a fresh run): removed if it ends for nothing
    config_error: bool = False  # a child exited with a configuration error

    @classmethod
    def prepare(cls, cfg: Config) -> EmbeddedRun:
        """A fresh run directory with the resolved config, loopback ports filled in; its inputs
        checked first (`preflight`), so a bad one makes no directory."""
        preflight(cfg)
        run_dir = fresh_run_dir(cfg.run.path)
        created = not run_dir.exists()
        run = cls._in(run_dir, cfg)
        run.created = created
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EmbeddedRun:
        """The run in `run_dir`, from its own config.yaml, on fresh ports (the old ones may be taken);
        `overrides` (`--set KEY=VALUE`, keys in RESUMABLE_KEYS only) change it, in config.yaml too."""
        from common.config import resolve_config

        run_dir = Path(run_dir)
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; not a run directory")
        cfg = resolve_config(file=str(config))
        if overrides:
            cfg = resume_overrides(cfg, list(overrides))
            steps = _read_progress(run_dir).get("env_steps", 0)
            if cfg.run.online_env_steps < steps:
                raise InputError(
                    f"--set run.online_env_steps={cfg.run.online_env_steps}: the run has already "
                    f"played {steps:,} online env steps"
                )
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=str(run_dir.parent)))
        preflight(cfg, run_dir)
        return cls._in(run_dir, cfg)

    @classmethod
    def _in(cls, run_dir: Path, cfg: Config) -> EmbeddedRun:
        host = "127.0.0.1"
        cfg = dataclasses.replace(
            cfg,
            # Always fresh ports: gRPC lets two servers share a port, so a fixed one could silently
            # connect this run to another run's replay server.
            replay=dataclasses.replace(
                cfg.replay,
                address=host,
                port=pick_free_port(host),
                checkpoint_dir=cfg.replay.checkpoint_dir or str(run_dir / REPLAY_CHECKPOINTS),
            ),
            actor=dataclasses.replace(cfg.actor, weight_server=f"{host}:{pick_free_port(host)}"),
            run=dataclasses.replace(cfg.run, name=run_dir.name, bind_address=host),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")
        return cls(cfg, run_dir)

    def resumed_from(self) -> str | None:
        """What this run directory already holds, in words (None for a fresh one)."""
        progress, evals = self.progress(), self.evals()
        if not progress and not evals:
            return None
        parts = [
            f"{int(progress.get('env_steps', 0)):,} online env steps",
            f"{int(progress.get('updates', 0)):,} updates",
            f"weight version {int(progress.get('version', 0))}",
            f"{len(evals)} evaluations",
        ]
        learner = self.run_dir / "checkpoints" / "learner.pt"
        parts.append("learner checkpoint" if learner.exists() else "no learner checkpoint (starts over)")
        replay = Path(self.cfg.replay.checkpoint_dir) / "reverb"
        has_replay = replay.is_dir() and any(replay.iterdir())
        parts.append("replay checkpoint" if has_replay else "no replay checkpoint")
        return ", ".join(parts)

    def _child(self, name: str, *job: str, metrics_port: int = 0) -> Child:
        argv = [sys.executable, "-m", "deploy.cli", *job, "--config", str(self.run_dir / "config.yaml")]
        if metrics_port:
            argv += ["--set", f"run.metrics_port={metrics_port}"]
        return Child(name, argv, self.run_dir / "logs" / f"{name}.log")

    def plan(self) -> list[Child]:
        base = self.cfg.run.metrics_port  # 0: no metrics; else consecutive ports from here
        port = (lambda i: base + i) if base else (lambda i: 0)
        learner = self._child("learner", "learner", metrics_port=port(1))
        learner.env = learner_thread_env(os.environ, self.cfg.actor.num_actors)
        children = [
            self._child("replay", "replay-server", metrics_port=port(0)),
            learner,
            self._child("evaluator", "evaluate", metrics_port=port(2)),
        ]
        children += [
            self._child(f"actor{i}", "actor", "--actor-id", str(i), metrics_port=port(3 + i))
            for i in range(self.cfg.actor.num_actors)
        ]
        return children

    def progress(self) -> dict:
        return _read_progress(self.run_dir)

    def evals(self, kind: str = "eval") -> list[dict]:
        try:
            lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if record.get("kind") == kind:
                records.append(record)
        return records

    def run(self, stop: threading.Event) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("OVMSE__")}  # the config file is the truth
        # The weight service's token for this run (common/auth.py), handed to the children only
        # (restarted ones too: they get the same environment).
        env[TOKEN_ENV] = env.get(TOKEN_ENV) or new_token()
        self.env = env
        plan = {c.name: c for c in self.plan()}
        self.children = plan
        print(
            f"ovmse run: {self.run_dir} ({self.cfg.env.map_name}, {self.cfg.learner.method}, "
            f"{self.cfg.actor.num_actors} actors x {self.cfg.actor.envs_per_actor} battles); "
            f"logs in {self.run_dir / 'logs'}",
            flush=True,
        )
        resumed = self.resumed_from()
        if resumed:
            print(f"ovmse run: resuming: {resumed}", flush=True)
        try:
            plan["replay"].start(env)
            if not self._wait_ready(stop, self.cfg.replay.port, plan["replay"]):
                if stop.is_set():
                    return self._stopped()
                replay = plan["replay"]
                code = replay.process.returncode if not replay.alive() else None
                self.config_error = code == CONFIG_ERROR
                self._show_tail(replay)
                why = "exited with a configuration error" if self.config_error else "did not come up"
                return self._fail(f"replay server {why}", stop)
            for name, child in plan.items():
                if name != "replay":
                    child.start(env)
            return self._supervise(stop)
        finally:
            self.shutdown()
            self._discard_if_for_nothing()

    def _wait_ready(self, stop: threading.Event, port: int, child: Child) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not stop.is_set():
            if port_open("127.0.0.1", port):
                return True
            if not child.alive():
                return False
            time.sleep(0.1)
        return False

    def _tend(self, now: float, learner_done: bool) -> str | None:
        """Restart failed children when due; returns why the run must give up, if it must."""
        for name, child in self.children.items():
            if child.alive() or child.expected_exit:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.start(self.env)
                continue
            code = child.process.returncode
            if code == 0 or (learner_done and name != "learner"):
                # Actors and the evaluator stop once the learner is done; the learner when finished.
                child.expected_exit = True
                continue
            self._show_tail(child)
            if code == CONFIG_ERROR:  # the same configuration would fail the same way again
                self.config_error = True
                return f"{name} exited with a configuration error (exit code {code}); not restarting it"
            failures = child.failed(now)
            if failures > RESTART_LIMIT:
                return (
                    f"{name} failed {failures} times within {RESTART_WINDOW_S:.0f}s "
                    f"(last exit code {code}); giving up"
                )
            delay = restart_delay(failures)
            child.restart_at = now + delay
            print(
                f"ovmse run: {name} exited with code {code}; restarting it in {delay:.0f}s "
                f"(failure {failures} of at most {RESTART_LIMIT} within {RESTART_WINDOW_S:.0f}s)",
                flush=True,
            )
        return None

    def _show_tail(self, child: Child) -> None:
        """The last lines of a failed child's log, on stderr."""
        lines = child.tail()
        if lines:
            print(f"ovmse run: last lines of {child.log_path}:", file=sys.stderr)
            for line in lines:
                print(f"  | {line}", file=sys.stderr)
            sys.stderr.flush()

    def _stopped(self) -> int:
        print("ovmse run: stopping (signal); checkpoints are being written", flush=True)
        return 130

    def _supervise(self, stop: threading.Event) -> int:
        cfg = self.cfg
        # Rates count what this process has seen done: a resumed run starts at its earlier steps.
        before = self.progress()
        line = ProgressLine(
            cfg.run.online_env_steps,
            every_s=cfg.run.log_interval_s,
            start_steps=int(before.get("env_steps", 0)),
        )
        episodes_before = int(before.get("episodes", 0))
        learner_done_at = None
        while not stop.wait(0.2):
            now = time.monotonic()
            learner = self.children["learner"]
            if learner_done_at is None and not learner.alive() and learner.process.returncode == 0:
                learner_done_at = now
            give_up = self._tend(now, learner_done_at is not None)
            if give_up:
                return self._fail(give_up, stop)
            progress = self.progress()
            steps = int(progress.get("env_steps", 0))
            evals = self.evals()
            episodes = max(int(progress.get("episodes", 0)) - episodes_before, 0)
            fields = {
                "episodes_per_s": episodes / max(now - line.start, 1e-9),
                "updates_per_s": float(progress.get("updates_per_s", 0.0)),
            }
            if evals:  # none yet: no win rate rather than "nan"
                fields["test_win_rate"] = evals[-1]["win_rate"]
            line.maybe_print(steps, **fields)
            evaluator = self.children["evaluator"]
            if learner_done_at is not None and (
                not evaluator.alive() or now - learner_done_at > FINAL_EVAL_TIMEOUT_S
            ):
                break
        if stop.is_set():
            return self._stopped()
        return self._summary()

    def _summary(self) -> int:
        evals, final = self.evals(), self.evals("final_eval")
        progress = self.progress()
        print(
            f"ovmse run: done: {progress.get('env_steps', 0):,} online env steps, "
            f"{progress.get('updates', 0):,} updates",
            flush=True,
        )
        if evals:
            print(f"  test win rate at the start of online training: {win_rate_text(evals[0])}")
            print(
                f"  test win rate at the end: {win_rate_text((final or evals)[-1])}"
                + (f" ({final[-1]['episodes']} episodes)" if final else "")
            )
        if self.cfg.replay.checkpoint_dir:
            from replay.process import read_ledger

            lost = int(read_ledger(self.cfg.replay.checkpoint_dir).get("lost_online_episodes", 0))
            if lost:
                print(f"  online episodes lost to replay-server restarts: {lost}")
        for png in sorted(self.run_dir.glob("test_*.png")):
            print(f"  plot: {png}")
        return 0

    def _fail(self, why: str, stop: threading.Event) -> int:
        if self.config_error and self._for_nothing():
            print(f"ovmse run: {why}", file=sys.stderr, flush=True)
            return CONFIG_ERROR
        print(f"ovmse run: {why}; see {self.run_dir / 'logs'}", file=sys.stderr, flush=True)
        return CONFIG_ERROR if self.config_error else 1

    def _for_nothing(self) -> bool:
        """A run directory this run made that holds no checkpoint (pre-training's included) and no
        online step."""
        checkpoints = self.run_dir / "checkpoints"
        saved = checkpoints.is_dir() and any(p.is_file() for p in checkpoints.iterdir())
        return self.created and not saved and not int(self.progress().get("env_steps", 0))

    def _discard_if_for_nothing(self) -> None:
        """After a configuration error (its processes stopped): remove a run directory this run
        made and that holds nothing worth keeping; the failed process's log lines were shown."""
        if self.config_error and self._for_nothing() and self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            print(
                f"ovmse run: removed {self.run_dir}: the run stopped before saving anything in it",
                file=sys.stderr,
            )

    def shutdown(self) -> None:
        """Stop children in dependency order, each given time to checkpoint. The actors and the
        evaluator depend on nothing that stops before them, so they are signalled together: one
        by one, the actors still running went on playing past the stop while each other wound down."""
        players = [n for n in self.children if n.startswith("actor")] + ["evaluator"]
        for stage in (players, ["learner"], ["replay"]):
            stopping = [c for c in (self.children.get(n) for n in stage) if c is not None and c.alive()]
            for child in stopping:
                child.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            for child in stopping:
                child.wait(max(deadline - time.monotonic(), 0.1))


def run_embedded(cfg: Config) -> int:
    return execute(EmbeddedRun.prepare(cfg))


def resume_embedded(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> int:
    run = EmbeddedRun.resume(run_dir, overrides)
    progress = run.progress()
    budget_reached = int(progress.get("env_steps", 0)) >= run.cfg.run.online_env_steps
    if progress.get("done") and budget_reached and run.evals("final_eval"):
        print(
            f"ovmse run: {run.run_dir} already finished its budget; nothing to resume (a larger one: "
            "--set run.online_env_steps=N)",
            flush=True,
        )
        return 0
    return execute(run)


def _read_progress(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "learner_progress.json").read_text())
    except (OSError, ValueError):
        return {}


def execute(embedded: EmbeddedRun) -> int:
    """Run a prepared embedded run until it ends or SIGINT/SIGTERM stops it."""
    return run_until_signal(embedded.run)
