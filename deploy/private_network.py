"""A run whose services no other host and no other network namespace can reach (Linux).

Reverb binds every interface and checks no token, so anyone who reaches its port can insert and
sample. With `run.private_network: true`, `ovmse run` starts itself again inside a new user and
network namespace (`unshare --user --map-root-user --net`, which needs no root where the kernel
allows unprivileged user namespaces), brings that namespace's loopback up and runs there: the replay
server, the learner, the actors and the evaluator talk over a loopback no one outside has. The price:
nothing outside reaches the run's metrics either (Prometheus cannot scrape it); the run directory,
its logs, TensorBoard files and eval.csv are the same as ever.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

INSIDE = "OVMSE_PRIVATE_NETWORK"  # set in the environment of a process started inside
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
UNSHARE = ("unshare", "--user", "--map-root-user", "--net")


def inside() -> bool:
    """Whether this process was started inside a private network by `command_inside`."""
    return os.environ.get(INSIDE) == "1"


def unavailable() -> str | None:
    """Why a private network cannot be made here, or None when it can (tried, not guessed)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`unshare` failed: {error}"
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return f"this kernel refuses an unprivileged network namespace ({why})"
    return None


def command_inside(python_args: Sequence[str]) -> list[str]:
    """The command line that runs `python <python_args>` (e.g. `-m deploy.cli run ...`) inside a new
    private network, loopback up."""
    return [*UNSHARE, sys.executable, "-m", "deploy.private_network", *python_args]


def bring_loopback_up() -> None:
    """A new network namespace starts with its loopback down; the namespace's root may raise it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def reexec_inside(python_args: Sequence[str]) -> None:
    """Replace this process by `python <python_args>` inside a new private network. Raises
    RuntimeError (with the reason) where none can be made."""
    why = unavailable()
    if why is not None:
        raise RuntimeError(f"run.private_network: {why}")
    sys.stdout.flush()
    sys.stderr.flush()
    command = command_inside(python_args)
    os.execvpe(command[0], command, {**os.environ, INSIDE: "1"})


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m deploy.private_network PYTHON_ARGS...`: raise the loopback, then become
    `python PYTHON_ARGS...` (the process keeps its PID, so signals reach it as before)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bring_loopback_up()
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, INSIDE: "1"})


if __name__ == "__main__":
    main()
