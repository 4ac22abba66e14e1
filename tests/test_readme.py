"""The README stays true: every command in its ```bash blocks either runs here, in order, in a fresh
directory (holding an OG-MARL-style vault `3m.vlt/Good` written by flashbax, for the commands that
read OG-MARL's data), and exits 0, or is listed below with the reason it is not run (it takes
minutes or serves until stopped). A cheap command that stops working fails this test,
and so does a new command that is neither cheap enough to run nor listed. The README names no
issue numbers.

The README and docs/ also stay readable off this repository: no directories of the machine they
were written on, no files outside the repository, every link to a repository file reaches it and
every #anchor a heading of its target, and the README's map count is the lite world's."""

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
DOCS = ROOT / "docs"
# The hand-written pages; docs/bench/ holds what the benchmark scripts write.
PAGES = [README, *sorted(DOCS.glob("*.md")), *sorted((DOCS / "results").rglob("*.md"))]

# Command prefix -> why the test does not run it. Every entry must still match a README command.
NOT_RUN = {
    "make demo": "minutes: the whole demo (measured in the README)",
    "make test": "this test suite itself",
    "ovmse pretrain": "minutes: 2,000 offline updates by default",
    "ovmse run": "minutes: a whole distributed run",
    "tensorboard --logdir": "a server that runs until stopped (test_tensorboard.py runs the command)",
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


# --- the README and docs, read as a user of the repository reads them ------------------------------

# A directory of the machine a page was written on (/root/..., /work/..., /tmp/..., /home/...).
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:root|work|tmp|home)\b")
# Files beside the repository that users do not have, by name; on the hand-written pages also the
# bare names these were cited by.
OUTSIDE_FILES = re.compile(r"\bDESIGN\.md|\bSPEC-[\w-]*\.md|\.\./shared\b")
OUTSIDE_NAMES = re.compile(r"\bDESIGN\b|\bSPEC-[\w-]+|\bshared/(?:DESIGN|SPEC)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_fences(text: str) -> str:
    """`text` without its fenced code blocks."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """`text` without fenced code blocks and inline code spans (GitHub renders no link in them)."""
    return re.sub(r"(`+).+?\1", "", without_fences(text), flags=re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercased, punctuation except hyphens and
    underscores dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a markdown text, repeats numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_fences(text), flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """Links of `page` to repository files that do not exist, or to anchors their file lacks."""
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if not file_part:
            if anchor not in anchors(text):
                bad.append(f"{target}: no heading #{anchor}")
            continue
        linked = (page.parent / file_part).resolve()
        if not linked.is_relative_to(root.resolve()) or not linked.exists():
            bad.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            bad.append(f"{target}: no heading #{anchor}")
    return bad


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def text_files() -> list[Path]:
    """The README and every text file under docs/ (pages, results, benchmark logs and tables)."""
    kinds = {".md", ".json", ".csv", ".log", ".txt", ".yaml", ".yml"}
    return [README, *sorted(p for p in DOCS.rglob("*") if p.is_file() and p.suffix in kinds)]


def test_no_page_names_a_directory_of_the_machine_it_was_written_on():
    found = [
        f"{page_name(p)}:{n}: {line.strip()}"
        for p in text_files()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert found == []


def test_no_page_names_files_outside_the_repository():
    found = [
        f"{page_name(p)}:{n}: {line.strip()}"
        for p in [README, *sorted(DOCS.rglob("*.md"))]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE_FILES.search(line) or (p in PAGES and OUTSIDE_NAMES.search(line))
    ]
    assert found == []


def test_every_link_reaches_a_repository_file_and_heading():
    found = [
        f"{page_name(p)}: {bad}"
        for p in [README, *sorted(DOCS.rglob("*.md"))]
        for bad in broken_links(p, p.read_text())
    ]
    assert found == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each check against a planted bad line (and the lines it must let through)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# The `ovmse` CLI: a, b & c\n## Speed\n## Speed\n")
    page = tmp_path / "README.md"
    good = (
        "[a](docs/a.md) [b](docs/a.md#the-ovmse-cli-a-b--c) [c](docs/a.md#speed-1) [d](#top)\n"
        "[e](https://example.org/x#y) `[f](missing.md)`\n# Top\n"
    )
    assert broken_links(page, good, root=tmp_path) == []
    bad = "[a](docs/missing.md) [b](docs/a.md#gone) [c](#nowhere) [d](../outside.md)\n"
    assert broken_links(page, bad, root=tmp_path) == [
        "docs/missing.md: no such file",
        "docs/a.md#gone: no heading #gone",
        "#nowhere: no heading #nowhere",
        "../outside.md: no such file",
    ]
    for line in ("see /work/runs-12/x.h5", "`/root/.cache`", '"path": "/tmp/a"', "cd /home/me", "in /work"):
        assert MACHINE_PATH.search(line), line
    for line in ("runs/work/x", "~/tmp", "http://host/home/x", "/data/runs", "a/b/tmp/c"):
        assert not MACHINE_PATH.search(line), line
    for line in ("as DESIGN.md says", "SPEC-SMAC.md", "../shared/notes"):
        assert OUTSIDE_FILES.search(line), line
    for line in ("DESIGN's aim", "the 16 maps of SPEC-SMAC"):
        assert OUTSIDE_NAMES.search(line), line
    assert not OUTSIDE_NAMES.search("a design choice; shared memory")


def test_the_readme_counts_the_lite_worlds_maps():
    from common.envs.maps import MAPS

    counts = re.findall(r"(\d+) SMAC maps", README.read_text())
    assert counts and {int(c) for c in counts} == {len(MAPS)}


def test_the_world_page_counts_the_smacv2_scenarios():
    from common.envs.smacv2 import SCENARIOS

    counts = re.findall(r"(\d+) SMACv2 scenarios", (DOCS / "world.md").read_text())
    assert counts and {int(c) for c in counts} == {len(SCENARIOS)}
