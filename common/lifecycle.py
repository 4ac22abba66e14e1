"""Process lifetime: run a job until SIGTERM or SIGINT asks it to stop, or make both signals raise
in the main thread (`sigterm_raises`), so a stop is never lost."""

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so its cleanup (`finally`, `except BaseException`) runs."""


DELIVER_AGAIN_AFTER_S = 0.01  # after an interrupt was swallowed, before it is delivered again
LATE_STOP_WAIT_S = 1.0  # at most this long, at the end of the block, for a stop still on its way


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises `Terminated` and SIGINT (Ctrl-C) `KeyboardInterrupt` in the
    main thread instead of ending the process on the spot, so writers remove their temporary files
    on the way out (`Terminated` is a KeyboardInterrupt: one `except` catches both). Outside the
    main thread it changes nothing.

    Python runs a signal handler wherever the main thread happens to be, and when that is a weakref
    callback or a `__del__` (h5py's caches run them while a dataset is written) it prints the
    exception ("Exception ignored in: ... KeyboardInterrupt") and carries on: the stop would be
    lost. Such an interrupt is caught by the unraisable hook and the signal delivered again, until
    it is raised in the job's own code. A stop delivered again is taken inside the block, never
    after it (where it would end the process by the signal, past the caller's own handling)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    lock = threading.Lock()
    # pending: the signal of an interrupt swallowed and not yet raised again; in_flight: delivered
    # again, its handler not yet run.
    state: dict = {"active": True, "pending": None, "in_flight": False}
    kinds = {signal.SIGTERM: Terminated, signal.SIGINT: KeyboardInterrupt}

    def raise_stop(signum, frame):
        with lock:
            state["pending"], state["in_flight"] = None, False
        raise kinds[signum](f"stopped by signal {signum}")

    def deliver_again() -> None:  # in its own thread: from the hook it would be dropped again
        time.sleep(DELIVER_AGAIN_AFTER_S)
        with lock:
            if state["active"] and state["pending"] is not None:
                state["in_flight"] = True
                _thread.interrupt_main(state["pending"])

    def deliver_again_if_swallowed(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, KeyboardInterrupt):
            with lock:
                state["pending"] = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
            threading.Thread(target=deliver_again, daemon=True).start()
        else:
            previous_hook(unraisable)

    previous = {signum: signal.signal(signum, raise_stop) for signum in kinds}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = deliver_again_if_swallowed
    stopped, late = False, None
    try:
        yield
    except KeyboardInterrupt:
        stopped = True
        raise
    finally:
        with lock:
            state["active"] = False
        deadline = time.monotonic() + LATE_STOP_WAIT_S
        while state["in_flight"] and time.monotonic() < deadline:  # taken here, by raise_stop
            try:
                time.sleep(0.001)
            except KeyboardInterrupt as error:
                late = error
        if state["pending"] is not None:  # swallowed as the block ended: not delivered again
            late = kinds[state["pending"]](f"stopped by signal {state['pending']}")
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if late is not None and not stopped:  # the job ended as the stop came: it still stops
            raise late
