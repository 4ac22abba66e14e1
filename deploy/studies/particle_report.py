"""The results of `ovmse reproduce --map simple_spread`, from its finished trials' done.json:

- results.json: marl-eval's raw format (environment "mpe", task MAP_KIND, algorithm = method, run =
  seed; each evaluation's normalised score and return at its actor step, the final policy's as
  absolute metrics), as the SMAC sweeps write it;
- table.md: per method, the final policy's normalised score as median and IQM over seeds with 95%
  stratified bootstrap intervals, its mean return, the score per seed, and the probability that
  OMSD improves on each other method;
- curves_score.png: per method, the median score over seeds against actor updates with a 95%
  bootstrap band of the median.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from common.atomic_files import atomic_path, write_json
from deploy.studies.bootstrap import Interval, bootstrap_ci, iqm, mean, median, probability_of_improvement_ci
from deploy.studies.curves import Band, plot_bands
from deploy.studies.marl_eval import RunCurve, raw_results

ENVIRONMENT = "mpe"  # marl-eval's name for the multi-agent particle worlds
BOOTSTRAP_REPS = 2000
OURS = "omsd"  # the method the probabilities of improvement are about


def finished_trials(out: Path, sweep: dict) -> dict[str, list[dict]]:
    """{method: [done.json of each finished seed, by seed]} in the sweep's order of methods."""
    found: dict[str, list[dict]] = {}
    for method in sweep["methods"]:
        found[method] = []
        for seed in range(sweep["seeds"]):
            done = out / f"{method}_s{seed}" / "done.json"
            if done.is_file():
                found[method].append(json.loads(done.read_text()))
    return found


def marl_eval_results(sweep: dict, trials: dict[str, list[dict]]) -> dict:
    curves = {
        method: {
            f"seed_{t['seed']}": RunCurve(
                evals=[(e["actor_steps"], {"score": e["score"], "return": e["return"]}) for e in t["curve"]],
                absolute={"score": t["final_score"], "return": t["final_return"]},
            )
            for t in done
        }
        for method, done in trials.items()
        if done
    }
    return raw_results(ENVIRONMENT, f"{sweep['map']}_{sweep['dataset_kind']}", curves)


def _ci(values: list[float], statistic) -> Interval | None:
    if not values:
        return None
    return bootstrap_ci(np.array(values, dtype=float)[:, None], statistic, reps=BOOTSTRAP_REPS)


def _cell(interval: Interval | None, digits: int = 1) -> str:
    return "—" if interval is None else interval.text(digits)


def table_markdown(sweep: dict, trials: dict[str, list[dict]]) -> str:
    b = sweep["budget"]
    finished = ", ".join(f"{m} {len(done)}" for m, done in trials.items())
    lines = [
        f"# {sweep['map']} {sweep['dataset_kind']}: {', '.join(trials)}",
        "",
        f"Dataset `{Path(sweep['dataset']).name}` ({sweep['dataset_kind']}); scores normalised by its card: "
        "0 = uniform random actions, 100 = the expert. "
        f"{sweep['seeds']} seeds asked, finished per method: {finished}.",
        f"Budget per trial: {b['behaviour_steps']:,} behaviour and {b['critic_steps']:,} critic updates "
        f"(OMSD's phases), {b['actor_steps']:,} actor updates (every method), batch {b['batch_size']}; "
        f"OMSD's beta {sweep['beta']}. Evaluations every {b['eval_interval']:,} actor updates on "
        f"{b['eval_episodes']} episodes; the final policy on {b['final_episodes']}.",
        "",
        "Final policy's normalised score: median and IQM over seeds, 95% stratified bootstrap intervals "
        f"({BOOTSTRAP_REPS} resamples); mean return with its bootstrap interval.",
        "",
        "| method | seeds | score, median | score, IQM | mean return | score per seed |",
        "|---|---|---|---|---|---|",
    ]
    for method, done in trials.items():
        scores = [t["final_score"] for t in done]
        per_seed = ", ".join(f"s{t['seed']} {t['final_score']:.1f}" for t in done) or "—"
        lines.append(
            f"| {method} | {len(done)} | {_cell(_ci(scores, median))} | {_cell(_ci(scores, iqm))} | "
            f"{_cell(_ci([t['final_return'] for t in done], mean), 2)} | {per_seed} |"
        )
    ours = trials.get(OURS, [])
    others = [m for m, done in trials.items() if m != OURS and done]
    if ours and others:
        lines += [
            "",
            "Probability of improvement on the final score: P(X > Y) + P(X = Y)/2 for a random seed of "
            "each, 95% bootstrap interval (each side resampled).",
            "",
            "| comparison | probability of improvement |",
            "|---|---|",
        ]
        x = np.array([t["final_score"] for t in ours])[:, None]
        for other in others:
            y = np.array([t["final_score"] for t in trials[other]])[:, None]
            interval = probability_of_improvement_ci(x, y, reps=BOOTSTRAP_REPS)
            lines.append(f"| {OURS} > {other} | {interval.text(3)} |")
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    return "\n".join(lines) + "\n"


def score_bands(trials: dict[str, list[dict]], reps: int = 500) -> list[Band]:
    """Per method: the median score over seeds at each evaluation every seed has, with a 95%
    bootstrap band of the median."""
    bands = []
    for method, done in trials.items():
        if not done:
            continue
        k = min(len(t["curve"]) for t in done)
        if k == 0:
            continue
        steps = [done[0]["curve"][i]["actor_steps"] for i in range(k)]
        values = np.array([[t["curve"][i]["score"] for i in range(k)] for t in done], dtype=float)
        cis = [bootstrap_ci(values[:, i][:, None], median, reps=reps) for i in range(k)]
        bands.append(
            Band(
                f"{method} ({len(done)} seeds)",
                steps,
                [c.point for c in cis],
                [c.low for c in cis],
                [c.high for c in cis],
            )
        )
    return bands


def write_particle_report(out: Path, sweep: dict) -> dict[str, list[dict]]:
    """results.json, table.md and curves_score.png in `out` from its finished trials."""
    trials = finished_trials(out, sweep)
    write_json(out / "results.json", marl_eval_results(sweep, trials))
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(table_markdown(sweep, trials))
    bands = score_bands(trials)
    if bands:
        plot_bands(
            out / "curves_score.png",
            bands,
            "actor updates",
            "normalised score (0 random, 100 expert)",
            f"{sweep['map']} {sweep['dataset_kind']}: median over seeds, 95% bootstrap band",
            legend_fontsize=8,
        )
    return trials
