"""Process lifetime: run a job until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_until_signal(job: Callable[[threading.Event], T]) -> T:
    """Run `job(stop)`, setting `stop` on SIGTERM or SIGINT so the job can finish cleanly (write its
    checkpoints); the previous handlers come back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return job(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so its cleanup (`finally`, `except BaseException`) runs."""


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt, as Ctrl-C would) in the
    main thread instead of ending the process on the spot, so writers remove their temporary files
    on the way out. Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
