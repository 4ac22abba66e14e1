"""Process lifetime: run a job until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_until_signal(job: Callable[[threading.Event], T], stop_within_s: float | None = None) -> T:
    """Run `job(stop)`, setting `stop` on SIGTERM or SIGINT so the job can finish cleanly (write its
    checkpoints); the previous handlers come back afterwards.

    With `stop_within_s`, the job runs in a thread and, once asked to stop, gets that long to finish;
    past it the process exits at once (status 0, with a line on stderr). That is for jobs that can
    block in native code where `stop` is never looked at: an actor whose insert the replay's rate
    limiter holds back while the learner is down would otherwise ignore SIGTERM until it came back."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if stop_within_s is None:
            return job(stop)
        outcome: dict = {}

        def target() -> None:
            try:
                outcome["value"] = job(stop)
            except BaseException as error:  # re-raised in the main thread
                outcome["error"] = error

        thread = threading.Thread(target=target, name="job", daemon=True)
        thread.start()
        while thread.is_alive() and not stop.is_set():
            thread.join(0.2)
        thread.join(stop_within_s)
        if thread.is_alive():
            print(f"still blocked {stop_within_s:.0f}s after the stop signal; exiting now", file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(0)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_main_thread_soon(delay_s: float = 0.01) -> None:
    time.sleep(delay_s)
    _thread.interrupt_main(signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so its cleanup (`finally`, `except BaseException`) runs."""


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt, as Ctrl-C would) in the
    main thread instead of ending the process on the spot, so writers remove their temporary files
    on the way out. Outside the main thread it changes nothing.

    Python runs a signal handler wherever the main thread happens to be, and when that is a weakref
    callback or a `__del__` (h5py's caches run them while a dataset is written) it prints the
    exception and carries on: the stop would be lost. Such a `Terminated` is caught by the
    unraisable hook and the signal delivered again, until it is raised in the job's own code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"stopped by signal {signum}")

    def deliver_again_if_swallowed(unraisable) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            # Later and from another thread: run here, `terminate` would be ignored again.
            threading.Thread(target=_signal_main_thread_soon, daemon=True).start()
        else:
            previous_hook(unraisable)

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = deliver_again_if_swallowed
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
