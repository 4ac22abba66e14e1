"""The loop every study runs its trials with: each unfinished trial once the trials it needs have
finished, as many at once as its pool allows, a progress line with an ETA, and the study's report
rewritten after each pre-training and online trial and at the end.

What a study brings: its trials in order (`deploy.studies.sweep.Trial`, with their `needs`), what
makes a trial finished in its output directory (`done.json` by default; a study with another mark
passes `finished`), a pool (`deploy/studies/pools.py`) and a report. Rerunning a study skips its
finished trials and starts the others again.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.studies.sweep import Trial, is_done, read_done

PROGRESS_EVERY_S = 30.0
QUIET_EVERY_S = 300.0
REPORTED_KINDS = ("pretrain", "online")  # the report is rewritten after each trial of these kinds

Finished = Callable[[Path, str], bool]  # (output directory, trial name) -> has it finished?


@dataclass
class Progress:
    """The whole study's progress line: trials done / running / left and an ETA from the mean time
    of finished trials of each kind (their done.json's, else as measured by this run)."""

    trials: list[Trial]
    parallelism: int
    stream: object = None
    label: str = "reproduce"  # what the line starts with
    finished: Finished = is_done
    measured: dict[str, float] = field(default_factory=dict)  # seconds of trials that ended here
    _last: float = 0.0

    def seconds(self, out: Path, name: str) -> float | None:
        """How long a finished trial took: its done.json says, else this run saw; None if neither."""
        if is_done(out, name):
            with contextlib.suppress(OSError, ValueError, KeyError):
                return float(read_done(out, name)["seconds"])
        return self.measured.get(name)

    def line(self, out: Path, running: set[str], failed: set[str]) -> str:
        done = [t for t in self.trials if self.finished(out, t.name)]
        running = {n for n in running if not self.finished(out, n)}  # finished, not yet reaped
        left = [t for t in self.trials if t.name not in running and not self.finished(out, t.name)]
        seconds: dict[str, list[float]] = {}
        for t in done:
            took = self.seconds(out, t.name)
            if took is not None:
                seconds.setdefault(t.kind, []).append(took)
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
            f"{self.label}: {len(done)}/{len(self.trials)} trials done, {len(running)} running, "
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


def run_sweep(
    out: Path,
    trials: list[Trial],
    pool,
    report: Callable[[], object] | None = None,
    label: str = "reproduce",
    finished: Finished = is_done,
) -> int:
    """Run every unfinished trial of `trials` on `pool`, each once its needs are done; call
    `report()` after each online trial and pre-training and at the end. 0 when all finished, 1 when
    any failed. Every line printed starts with `label`."""
    todo = [t for t in trials if not finished(out, t.name)]
    kinds = {t.name: t.kind for t in trials}
    print(
        f"{label}: {len(trials)} trials, {len(trials) - len(todo)} already finished, {len(todo)} to run "
        f"(output in {out})",
        flush=True,
    )
    progress = Progress(trials, pool.parallelism, label=label, finished=finished)
    running: set[str] = set()
    failed: set[str] = set()
    started: dict[str, float] = {}
    progress.show(out, running, failed, force=True)
    try:
        while True:
            blocked = failed | {t.name for t in todo if any(n in failed for n in t.needs)}
            ready = [
                t
                for t in todo
                if t.name not in running
                and t.name not in blocked
                and not finished(out, t.name)
                and all(finished(out, n) for n in t.needs)
            ]
            for trial in ready[: pool.slots]:
                pool.submit(trial.name)
                running.add(trial.name)
                started[trial.name] = time.monotonic()
            if not running:
                break
            for name, rc in pool.wait(timeout=5.0):
                running.discard(name)
                progress.measured[name] = time.monotonic() - started.pop(name)
                if rc != 0 or not finished(out, name):
                    failed.add(name)
                    log = pool.log_path(name)
                    see = f"; see {log}" if log else ""
                    print(f"{label}: trial {name} failed (exit {rc}){see}", file=sys.stderr, flush=True)
                else:
                    took = progress.seconds(out, name) or 0.0
                    print(f"{label}: {name} done in {_duration(took)}", flush=True)
                    if report is not None and kinds[name] in REPORTED_KINDS:
                        _report_safely(report, label)
                progress.show(out, running, failed, force=True)
            progress.show(out, running, failed)
    finally:
        pool.close()
    if report is not None:
        _report_safely(report, label)
    progress.show(out, running, failed, force=True)
    unfinished = [t.name for t in todo if not finished(out, t.name)]
    if unfinished:
        print(f"{label}: {len(unfinished)} trials did not finish: {', '.join(unfinished)}", file=sys.stderr)
        return 1
    return 0


def _report_safely(report: Callable[[], object], label: str) -> None:
    try:
        report()
    except Exception as error:  # a report that fails must not stop the trials
        print(f"{label}: writing the results failed: {error!r}", file=sys.stderr, flush=True)
