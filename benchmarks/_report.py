"""Shared by the benchmarks: machine description and writing results to docs/bench/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

DOCS_BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1m": round(load, 2),
    }


def write(name: str, results: dict, markdown: str, directory: Path | None = None) -> Path:
    """Write <directory>/<name>.json and .md atomically (temp file + rename); docs/bench/ by default."""
    directory = DOCS_BENCH if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **results}
    for suffix, text in ((".json", json.dumps(payload, indent=2) + "\n"), (".md", markdown)):
        path = directory / f"{name}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return directory / f"{name}.md"


def pin_to_one_core() -> str:
    """Run this process on one core, so "per core" numbers mean what they say."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"
