"""Every process a test starts dies with the test process, also when pytest itself is stopped from
outside (a CI timeout's SIGTERM, or SIGKILL) and no fixture's teardown runs: on Linux each child
started from the main thread asks the kernel for SIGTERM when pytest goes (`die_with_parent`, the
parent-death signal the orchestrator gives its own children). A replay server or learner a test
started is then never found running minutes later, its parent gone."""

from __future__ import annotations

import subprocess
import sys
import threading

from deploy.studies.pools import die_with_parent


def _dies_with_this_process(popen_init):
    def init(self, *args, preexec_fn=None, **kwargs):
        # Only from the main thread: the kernel signals the child when the thread that started it
        # ends, and a worker thread may end long before the test does.
        if threading.current_thread() is threading.main_thread():
            own = preexec_fn

            def preexec_fn() -> None:
                die_with_parent()
                if own is not None:
                    own()

        popen_init(self, *args, preexec_fn=preexec_fn, **kwargs)

    init.dies_with_parent = True
    return init


if sys.platform == "linux" and not getattr(subprocess.Popen.__init__, "dies_with_parent", False):
    subprocess.Popen.__init__ = _dies_with_this_process(subprocess.Popen.__init__)
