"""Errors about bad input that a command reports as one line, without a traceback.

`deploy/cli.py` prints any `InputError` as `ovmse COMMAND: MESSAGE` and exits with status 2. The
message names the file (or flag, or key) and what is wrong with it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a file, a flag, a message) described in one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class CheckpointError(InputError):
    """A learner checkpoint that cannot be used: `PATH: what is wrong`."""

    def __init__(self, path, detail: str):
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")

    def __reduce__(self):  # keep path and detail across processes (pickle)
        return (CheckpointError, (self.path, self.detail))


class RunHalted(RuntimeError):
    """A run that cannot go on safely (e.g. its weights are no longer numbers), in one line; the
    CLI prints it without a traceback and exits with status 1."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())
