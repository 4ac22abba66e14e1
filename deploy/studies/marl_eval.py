"""marl-eval's raw experiment format, written and checked: pure functions on plain data.

    {environment: {task: {algorithm: {run: {"step_0": {"step_count": int, metric: [values]}, ...,
                                            "absolute_metrics": {metric: [values]}}}}}}

marl-eval (Gorsane et al. 2022) needs every run of a file to have the same steps, so `raw_results`
keeps the first k evaluations of every run, k the fewest any run has.
"""

from __future__ import annotations

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
