"""The README stays true: every command in its ```bash blocks either runs here, in order, in a fresh
directory (holding an OG-MARL-style vault `3m.vlt/Good` written by flashbax, for the commands that
read OG-MARL's data), and exits 0, or is listed below with the reason it is not run (it takes
minutes or serves until stopped). A cheap command that stops working fails this test,
and so does a new command that is neither cheap enough to run nor listed. The README names no
issue numbers."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Command prefix -> why the test does not run it. Every entry must still match a README command.
NOT_RUN = {
    "make demo": "minutes: the whole demo (measured in the README)",
    "make test": "this test suite itself",
    "ovmse pretrain": "minutes: 2,000 offline updates by default",
    "ovmse run": "minutes: a whole distributed run",
    "tensorboard --logdir": "a server that runs until stopped",
}
SECONDS_PER_COMMAND = 300  # each takes seconds on an idle 2-core machine; CI may be busy


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


COMMANDS = readme_commands(README.read_text())


def not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def test_the_readme_has_commands_and_every_skipped_prefix_is_still_in_it():
    assert len(COMMANDS) >= 8
    stale = [prefix for prefix in NOT_RUN if not any(c.startswith(prefix) for c in COMMANDS)]
    assert stale == []


def test_the_readme_names_no_issue_numbers():
    assert re.findall(r"(?i)\bissue\s*#?\d+", README.read_text()) == []


def test_the_command_parser_reads_blocks_continuations_and_comments():
    text = (
        "x\n```bash\nmake demo   # a comment\n# only a comment\novmse run --a 1 \\\n    --b 2\n```\n"
        "```\nnot bash\n```\n"
    )
    assert readme_commands(text) == ["make demo", "ovmse run --a 1 --b 2"]


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "ovmse":
        return [sys.executable, "-m", "deploy.cli", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return words


@pytest.mark.slow
def test_every_cheap_readme_command_runs(tmp_path):
    """In README order, in one directory (later commands use what earlier ones wrote)."""
    from test_vaults import flashbax, og_marl_arrays

    np.savez(tmp_path / "good.npz", **og_marl_arrays())
    flashbax("write", str(tmp_path), "3m.vlt", f"Good={tmp_path / 'good.npz'}")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ran = []
    for command in COMMANDS:
        if not_run(command):
            continue
        done = subprocess.run(
            argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS_PER_COMMAND
        )
        assert done.returncode == 0, f"README command failed: {command}\n{done.stderr[-2000:]}"
        ran.append(command)
    assert any(c.startswith("ovmse config") for c in ran)
    assert any(c.startswith("ovmse dataset collect") for c in ran)
    assert any(c.startswith("ovmse dataset convert 3m.vlt/Good") for c in ran)
