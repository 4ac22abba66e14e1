"""Process lifetime: run a job until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

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
