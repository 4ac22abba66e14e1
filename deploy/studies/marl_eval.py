"""marl-eval's raw experiment format, written and checked: pure functions on plain data.

    {environment: {task: {algorithm: {run: {"step_0": {"step_count": int, metric: [values]}, ...,
                                            "absolute_metrics": {metric: [values]}}}}}}

marl-eval (Gorsane et al. 2022) needs every run of a file to have the same steps, so `raw_results`
keeps the first k evaluations of every run, k the fewest any run has.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

ABSOLUTE = "absolute_metrics"


@dataclass
class RunCurve:
    """One run: its evaluations in order as (env steps, {metric: value}), and the final policy's
    metrics (marl-eval's absolute metrics)."""

    evals: list[tuple[int, dict[str, float]]]
    absolute: dict[str, float] = field(default_factory=dict)


def raw_results(environment: str, task: str, runs: dict[str, dict[str, RunCurve]]) -> dict:
    """{algorithm: {run name: RunCurve}} as marl-eval's raw format. Each metric is a one-element list
    (a win rate or mean return over the evaluation's episodes, as marl-eval allows)."""
    curves = [c for by_run in runs.values() for c in by_run.values()]
    steps = min((len(c.evals) for c in curves), default=0)
    algorithms: dict[str, dict] = {}
    for algorithm, by_run in runs.items():
        block: dict[str, dict] = {}
        for run, curve in by_run.items():
            entry: dict[str, dict] = {}
            for i, (step_count, metrics) in enumerate(curve.evals[:steps]):
                entry[f"step_{i}"] = {
                    "step_count": int(step_count),
                    **{k: [float(v)] for k, v in metrics.items()},
                }
            entry[ABSOLUTE] = {k: [float(v)] for k, v in curve.absolute.items()}
            block[run] = entry
        algorithms[algorithm] = block
    return {environment: {task: algorithms}}


def check_raw_results(data: dict) -> list[str]:
    """Problems that would stop marl-eval's tools from reading `data`; empty when there are none."""
    problems: list[str] = []
    shapes: set[tuple] = set()
    for env, tasks in data.items():
        if not isinstance(tasks, dict):
            return [f"{env}: expected tasks"]
        for task, algorithms in tasks.items():
            runs_per_algorithm = set()
            for algorithm, runs in algorithms.items():
                runs_per_algorithm.add(len(runs))
                for run, steps in runs.items():
                    where = f"{env}/{task}/{algorithm}/{run}"
                    if ABSOLUTE not in steps:
                        problems.append(f"{where}: no {ABSOLUTE}")
                    names = [k for k in steps if k != ABSOLUTE]
                    if names != [f"step_{i}" for i in range(len(names))]:
                        problems.append(f"{where}: steps must be step_0..step_k in order, got {names}")
                    metric_sets = set()
                    for name in names:
                        step = steps[name]
                        if not isinstance(step.get("step_count"), int):
                            problems.append(f"{where}/{name}: step_count must be an int")
                        metrics = {k: v for k, v in step.items() if k != "step_count"}
                        if not all(isinstance(v, list) and v for v in metrics.values()):
                            problems.append(f"{where}/{name}: every metric must be a non-empty list")
                        metric_sets.add(tuple(sorted(metrics)))
                    if len(metric_sets) > 1:
                        problems.append(f"{where}: steps log different metrics")
                    shapes.add((len(names), *sorted(metric_sets)))
            if len(runs_per_algorithm) > 1:
                problems.append(
                    f"{env}/{task}: algorithms have different numbers of runs {sorted(runs_per_algorithm)}"
                )
    if len(shapes) > 1:
        problems.append(f"runs differ in their steps or metrics: {sorted(shapes)}")
    return problems


def merge_raw_results(parts: list[dict]) -> dict:
    """Several sweeps' raw results as one multi-task file: {environment: {task: ...}} with every
    task of every part; the same algorithm names across tasks, so marl-eval aggregates over tasks.
    A task in two parts is refused (ValueError), as are results marl-eval could not read."""
    merged: dict[str, dict] = {}
    for part in parts:
        problems = check_raw_results(part)
        if problems:
            raise ValueError(f"cannot merge: {problems[0]}")
        for env, tasks in part.items():
            for task, algorithms in tasks.items():
                if task in merged.setdefault(env, {}):
                    raise ValueError(f"cannot merge: task {env}/{task} is in two of the files")
                merged[env][task] = algorithms
    return merged


def _merge_main(argv: list[str]) -> int:
    """`python -m deploy.studies.marl_eval --out merged.json A/results.json B/results.json`."""
    import argparse
    import json
    from pathlib import Path

    from common.atomic_files import write_json

    parser = argparse.ArgumentParser(
        prog="python -m deploy.studies.marl_eval", description="merge sweeps' results.json into one file"
    )
    parser.add_argument("--out", required=True, metavar="FILE")
    parser.add_argument("inputs", nargs="+", metavar="RESULTS_JSON")
    args = parser.parse_args(argv)
    try:
        parts = [json.loads(Path(p).read_text()) for p in args.inputs]
        merged = merge_raw_results(parts)
    except (OSError, ValueError) as error:
        print(f"marl-eval merge: {error}", file=sys.stderr)
        return 2
    write_json(args.out, merged)
    tasks = sum(len(t) for t in merged.values())
    print(f"wrote {args.out}: {tasks} tasks from {len(parts)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(_merge_main(sys.argv[1:]))
