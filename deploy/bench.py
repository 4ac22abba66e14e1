"""`ovmse bench NAME`: run a benchmark from the repository's benchmarks/ folder.

Each `benchmarks/bench_<name>.py` has `main(argv) -> int`, prints progress, and writes its results
to `docs/bench/<name>.md` and `.json`; its docstring's first sentence says what it measures (e.g.
`omsd`: one OMSD diffusion, critic and actor update at batch 512 on one core). Benchmarks live
beside the code (not in the installed package), so this needs a source checkout, which `make bench`
and `make demo` provide.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def summary(name: str) -> str:
    """The first sentence of benchmark `name`'s docstring (read without importing it: no torch)."""
    path = BENCH_DIR / f"bench_{name}.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 100 else sentence.split(": ")[0]


def unknown_name(name: str) -> str | None:
    """The one-line refusal of a name that is no benchmark (with the closest one), or None."""
    names = available()
    if name == "all" or name in names:
        return None
    close = difflib.get_close_matches(name, [*names, "all"], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no benchmark named {name!r}{hint}; known: {', '.join([*names, 'all'])}"


def run_benchmark(name: str, quick: bool = False) -> int:
    path = BENCH_DIR / f"bench_{name}.py"
    refusal = unknown_name(name)
    if refusal is not None or not path.exists():
        print(f"ovmse bench: {refusal}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(["--quick"] if quick else []) or 0)


def main(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        print(
            f"ovmse bench: benchmarks folder not found at {BENCH_DIR} (needs a source checkout)",
            file=sys.stderr,
        )
        return 2
    refusal = unknown_name(args.name)
    if refusal is not None:  # before any heading: the error alone
        print(f"ovmse bench: {refusal}", file=sys.stderr)
        return 2
    names = available() if args.name == "all" else [args.name]
    status = 0
    for name in names:
        print(f"== bench {name}: {summary(name)}", flush=True)
        status = max(status, run_benchmark(name, quick=args.quick))
    return status
