"""Pass rates of end-to-end tests: run each test file N times, one run after another, and count
passes per test (docs/testing.md records the results).

    .venv/bin/python benchmarks/e2e_pass_rates.py --runs 5 tests/test_distributed.py tests/test_o2o_sync.py

One junit XML per run goes to --out (default runs/e2e_pass_rates/); the table is printed at the end
and written there as pass_rates.md. Runs are sequential: two at once would share the cores and
measure something else.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(xml_path: Path) -> dict[str, str]:
    """Test id -> "passed" | "failed" | "error" | "skipped" from one junit XML."""
    result = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        result[name] = {"failure": "failed"}.get(result[name], result[name])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="test files (or node ids) to run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/e2e_pass_rates"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    passes: dict[str, list[str]] = collections.defaultdict(list)
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    for run in range(1, args.runs + 1):
        for target in args.files:
            xml_path = args.out / f"{Path(target.split('::')[0]).stem}_{run}.xml"
            began = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    target,
                    f"--junitxml={xml_path}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            seconds[target].append(time.monotonic() - began)
            for test, outcome in outcomes(xml_path).items():
                passes[test].append(outcome)
            print(f"run {run} {target}: {seconds[target][-1]:.0f} s", flush=True)
    lines = ["| test | passed | runs |", "|---|---|---|"]
    for test, seen in sorted(passes.items()):
        lines.append(f"| `{test}` | {seen.count('passed')} | {len(seen)} |")
    table = "\n".join(lines)
    (args.out / "pass_rates.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
