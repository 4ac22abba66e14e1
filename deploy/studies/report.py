"""The results of an `ovmse reproduce` sweep, from its finished online trials' own logs:

- results.json: marl-eval's raw format (environment -> task -> algorithm -> seed -> step -> metrics,
  plus the final policy's "absolute_metrics"); the online evaluations only, so that every algorithm
  has the same steps (QMIX has no offline policy to score at step 0);
- summary.json: per trial, what the table is computed from (offline policy, every evaluation, final);
- table.md: per algorithm, the final test win rate as median and IQM over seeds with 95% stratified
  bootstrap intervals, mean return, the offline-to-online drop, env steps to a stated win rate, and
  the probability that OVMSE improves on each baseline;
- the offline table (in table.md and summary.json): every pre-training's final policy (the
  offline methods' only result: InSPO, BC, QMIX+CQL, CFCQL; the start of the online methods);
- curves_win_rate.png, curves_return.png: median over seeds against env steps with a 95% bootstrap
  band of the median; curves_probe.png: the unlearning probe (mean Q_tot on the offline policy's
  episodes) and the policy agreement with that policy, per offline-to-online method (median over
  seeds; QMIX from scratch has no offline policy; deploy/studies/curves.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic_files import atomic_path, write_json
from common.config.presets import METHODS
from deploy.studies.bootstrap import Interval, bootstrap_ci, iqm, mean, median, probability_of_improvement_ci
from deploy.studies.curves import plot_curves
from deploy.studies.marl_eval import RunCurve, raw_results
from deploy.studies.sweep import (
    Sweep,
    dataset_path,
    is_done,
    plan,
    read_done,
    read_records,
    sweep_offline_key,
)


@dataclass
class RunRecord:
    """One finished online trial, read from its own metrics.jsonl and done.json."""

    algorithm: str
    seed: int
    start: dict | None  # the starting (offline) policy's evaluation at env step 0; None for QMIX
    evals: list[dict]  # the online evaluations, in order
    final: dict  # the final policy's evaluation
    seconds: float
    # The evaluation at env step 0 whatever the method (QMIX from scratch: its initial policy):
    # marl-eval's step_0, so its curves start where online training does.
    initial: dict | None = None


def load_runs(out: Path, sweep: Sweep) -> dict[str, list[RunRecord]]:
    """{algorithm: [RunRecord per finished seed]} in the sweep's order of methods."""
    runs: dict[str, list[RunRecord]] = {}
    for trial in plan(sweep):
        if trial.kind != "online":
            continue
        runs.setdefault(trial.algorithm or "", [])
        if not is_done(out, trial.name):
            continue
        rows = read_records(out / trial.name)
        evals = [r for r in rows if r["kind"] == "eval"]
        finals = [r for r in rows if r["kind"] == "final_eval"]
        initial = evals[0] if evals and evals[0]["env_steps"] == 0 else None
        start = initial if METHODS[trial.method or "qmix"].offline_phase else None
        online = [r for r in evals if r["env_steps"] > 0]
        final = finals[-1] if finals else online[-1]
        seconds = float(read_done(out, trial.name)["seconds"])
        runs[trial.algorithm or ""].append(
            RunRecord(trial.algorithm or "", trial.seed, start, online, final, seconds, initial)
        )
    return runs


@dataclass
class PretrainRecord:
    """One finished pre-training: its final greedy evaluation (the policy it ends with)."""

    key: str  # the offline loss ("cql", "cfcql", "inspo", "bc", ...)
    seed: int
    win_rate: float
    mean_return: float
    episodes: int
    updates: int
    seconds: float


def load_pretrainings(out: Path, sweep: Sweep) -> dict[str, list[PretrainRecord]]:
    """{offline key: [PretrainRecord per finished seed]} in the sweep's order."""
    found: dict[str, list[PretrainRecord]] = {}
    for trial in plan(sweep):
        if trial.kind != "pretrain":
            continue
        key = sweep_offline_key(sweep, trial.method)
        found.setdefault(key, [])
        if not is_done(out, trial.name):
            continue
        done = read_done(out, trial.name)
        evals = [r for r in read_records(out / trial.name) if r["kind"] == "eval"]
        final = evals[-1]
        found[key].append(
            PretrainRecord(
                key,
                trial.seed,
                float(final["win_rate"]),
                float(final["return"]),
                int(final["episodes"]),
                int(done.get("updates", 0)),
                float(done["seconds"]),
            )
        )
    return found


def offline_label(sweep: Sweep, key: str) -> str:
    """A pre-training's row name: the offline method it is, or its loss and the methods sharing it."""
    users = [m for m in sweep.methods if sweep_offline_key(sweep, m) == key]
    return users[0] if users == [key] else f"{key} ({', '.join(users)})"


def summarize_offline(sweep: Sweep, pretrainings: dict[str, list[PretrainRecord]]) -> dict:
    reps = sweep.budget.bootstrap_reps
    rows = {}
    for key, records in pretrainings.items():
        wins = [r.win_rate for r in records]
        returns = [r.mean_return for r in records]
        rows[key] = {
            "label": offline_label(sweep, key),
            "seeds": [r.seed for r in records],
            "win_rate": wins,
            "return": returns,
            "episodes": [r.episodes for r in records],
            "updates": [r.updates for r in records],
            "seconds": [r.seconds for r in records],
            "median": _ci(wins, median, reps),
            "iqm": _ci(wins, iqm, reps),
            "mean_return": _ci(returns, mean, reps),
        }
    improvements = {}
    ours = pretrainings.get("inspo", [])
    for key, records in pretrainings.items():
        if key == "inspo" or not ours or not records:
            continue
        x = np.array([r.win_rate for r in ours])[:, None]
        y = np.array([r.win_rate for r in records])[:, None]
        improvements[f"inspo > {key}"] = probability_of_improvement_ci(x, y, reps=reps)
    return {"rows": rows, "improvements": improvements}


def offline_table_lines(sweep: Sweep, offline: dict) -> list[str]:
    rows = {k: r for k, r in offline["rows"].items() if r["seeds"]}
    if not rows:
        return []
    b = sweep.budget
    lines = [
        "",
        "## Offline pre-training",
        "",
        f"The policy each pre-training ends with ({b.offline_updates} updates of {b.batch_size} episodes "
        "after any behaviour cloning; bc is the cloning alone), greedy, on "
        f"{b.final_test_episodes} episodes per seed: the offline methods' result, and the starting point "
        "of the online methods that share it. Median and IQM over seeds, 95% stratified bootstrap intervals.",
        "",
        "| pre-training | seeds | win rate, median | win rate, IQM | mean return | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        per_seed = ", ".join(f"{w:.3f}" for w in row["win_rate"])
        lines.append(
            f"| {row['label']} | {len(row['seeds'])} | {_cell(row['median'])} | {_cell(row['iqm'])} | "
            f"{_cell(row['mean_return'], 2)} | {per_seed} |"
        )
    if offline["improvements"]:
        lines += ["", "| comparison (offline win rate) | probability of improvement |", "|---|---|"]
        for name, interval in offline["improvements"].items():
            lines.append(f"| {name} | {interval.text()} |")
    return lines


# --- per-run quantities (pure) -------------------------------------------------------------------


def offline_drop(run: RunRecord, window: int) -> float | None:
    """Lowest test return over the first `window` online evaluations minus the offline policy's
    (negative: the return dropped after the switch); None without an offline policy."""
    if run.start is None or not run.evals:
        return None
    return min(e["return"] for e in run.evals[:window]) - run.start["return"]


def steps_to_reach(run: RunRecord, win_rate: float) -> int | None:
    """Env steps of the first online evaluation at or above `win_rate`; None if none reached it."""
    for e in run.evals:
        if e["win_rate"] >= win_rate:
            return int(e["env_steps"])
    return None


# --- results.json ----------------------------------------------------------------------------------


def environment_name(sweep: Sweep) -> str:
    backend = next((o.split("=", 1)[1] for o in sweep.overrides if o.startswith("env.backend=")), "lite")
    return "smac_lite" if backend == "lite" else "smac"


def marl_eval_results(sweep: Sweep, runs: dict[str, list[RunRecord]]) -> dict:
    curves = {
        algorithm: {
            f"seed_{r.seed}": RunCurve(
                evals=[
                    (e["env_steps"], {"win_rate": e["win_rate"], "return": e["return"]})
                    for e in ([r.initial] if r.initial else []) + r.evals
                ],
                absolute={"win_rate": r.final["win_rate"], "return": r.final["return"]},
            )
            for r in records
        }
        for algorithm, records in runs.items()
        if records
    }
    return raw_results(environment_name(sweep), f"{sweep.map_name}_{sweep.dataset_kind}", curves)


# --- table.md ----------------------------------------------------------------------------------------


def _ci(values: list[float], statistic, reps: int) -> Interval | None:
    if not values:
        return None
    return bootstrap_ci(np.array(values, dtype=float)[:, None], statistic, reps=reps)


def _cell(interval: Interval | None, digits: int = 3) -> str:
    return "—" if interval is None else interval.text(digits)


def is_ovmse(algorithm: str) -> bool:
    return algorithm == "ovmse" or algorithm.startswith("ovmse_m")


def summarize(sweep: Sweep, runs: dict[str, list[RunRecord]]) -> dict:
    b = sweep.budget
    rows = {}
    for algorithm, records in runs.items():
        finals = [r.final["win_rate"] for r in records]
        returns = [r.final["return"] for r in records]
        drops = [d for d in (offline_drop(r, b.drop_window) for r in records) if d is not None]
        lowest = [d for d in (offline_drop(r, len(r.evals)) for r in records) if d is not None]
        reach = [steps_to_reach(r, b.target_win_rate) for r in records]
        reached = [s for s in reach if s is not None]
        starts = [r.start["win_rate"] for r in records if r.start is not None]
        rows[algorithm] = {
            "seeds": [r.seed for r in records],
            "final_win_rate": finals,
            "final_return": returns,
            "final_episodes": [r.final.get("episodes") for r in records],
            "offline_win_rate": starts,
            "drop": drops,
            "steps_to_target": reach,
            "median": _ci(finals, median, b.bootstrap_reps),
            "iqm": _ci(finals, iqm, b.bootstrap_reps),
            "mean_return": _ci(returns, mean, b.bootstrap_reps),
            "mean_drop": _ci(drops, mean, b.bootstrap_reps),
            "lowest": lowest,
            "mean_lowest": _ci(lowest, mean, b.bootstrap_reps),
            "median_offline": float(np.median(starts)) if starts else None,
            "median_steps_to_target": float(np.median(reached)) if reached else None,
            "reached": len(reached),
            "seconds": [r.seconds for r in records],
        }
    # Which pairs are compared: OVMSE against each baseline, and each method's mixing ratios
    # against each other (a --mixing-ratios study: does less offline data cost anything?).
    pairs = [(ours, other) for ours in runs if is_ovmse(ours) for other in runs if not is_ovmse(other)]
    pairs += mixing_ratio_pairs(list(runs))
    improvements = {}
    for ours, other in pairs:
        if runs[ours] and runs[other]:
            x, y = (np.array([r.final["win_rate"] for r in runs[a]])[:, None] for a in (ours, other))
            improvements[f"{ours} > {other}"] = probability_of_improvement_ci(x, y, reps=b.bootstrap_reps)
    return {"rows": rows, "improvements": improvements}


def mixing_ratio_pairs(algorithms: list[str]) -> list[tuple[str, str]]:
    """(lower ratio, higher ratio) for every two labels of one method at different mixing ratios
    ("ovmse_m0", "ovmse_m0.3"), lower ratios first: does using less offline data cost anything?"""
    by_method: dict[str, list[tuple[float, str]]] = {}
    for name in algorithms:
        found = re.fullmatch(r"(.+)_m(\d+(?:\.\d+)?)", name)
        if found:
            by_method.setdefault(found.group(1), []).append((float(found.group(2)), name))
    pairs = []
    for labels in by_method.values():
        labels.sort()
        pairs += [(a, b) for i, (_, a) in enumerate(labels) for (_, b) in labels[i + 1 :]]
    return pairs


def dataset_lines(out: Path, sweep: Sweep) -> list[str]:
    from replay.dataset_writer import card_path

    if not sweep.uses_dataset:
        return ["No dataset: every method trains from scratch."]
    path = dataset_path(out, sweep)
    card_file = card_path(path)
    if not card_file.exists():
        # a path inside --out as the sweep sees it, another by its name: no directory of this machine
        inside = path.resolve().is_relative_to(out.resolve())
        shown = path.resolve().relative_to(out.resolve()) if inside else path.name
        return [f"Dataset: `{shown}` (no card)."]
    card = json.loads(card_file.read_text())
    parts = [
        f"Dataset: {sweep.dataset_kind}, {card.get('episodes', '?')} episodes, "
        f"win rate {card.get('win_rate', float('nan')):.3f}, "
        f"return mean {card.get('return_mean', float('nan')):.2f}"
    ]
    if "behaviour_test_win_rate" in card:
        reached = "reached" if card.get("behaviour_reached_target") else "did NOT reach"
        parts.append(
            f"made from QMIX trained from scratch for {card['behaviour_env_steps']:,} env steps to a test "
            f"win rate of {card['behaviour_test_win_rate']:.3f} ({card['behaviour_test_episodes']} episodes; "
            f"it {reached} the stated medium level: win rate {card['behaviour_target_win_rate']}"
            + (
                f" or return {card['behaviour_target_return']}"
                if card.get("behaviour_target_return") is not None
                else ""
            )
            + ")"
        )
    return ["; ".join(parts) + "."]


def table_markdown(out: Path, sweep: Sweep, summary: dict, offline: dict | None = None) -> str:
    """table.md: the online trials' tables, then the pre-trainings' (`offline`, from
    `summarize_offline`), whichever the sweep has."""
    b = sweep.budget
    rows = summary["rows"]
    offline_names = list((offline or {}).get("rows", {}))
    lines = [f"# {sweep.title}: {', '.join(rows or offline_names)}", ""]
    if rows:
        lines += online_lines(out, sweep, summary)
    else:  # offline methods only: no online trial, so no online table
        lines += [
            f"Offline methods only; {sweep.seeds} seeds asked. Pre-training: {b.offline_updates} updates "
            f"of {b.batch_size} episodes (`cql_sampler={b.cql_sampler}`); final policy on "
            f"{b.final_test_episodes} greedy episodes.",
            *dataset_lines(out, sweep),
        ]
    lines += offline_table_lines(sweep, offline) if offline else []
    lines += [
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the lite world, not StarCraft II.",
    ]
    return "\n".join(lines) + "\n"


def online_lines(out: Path, sweep: Sweep, summary: dict) -> list[str]:
    """The online trials' part of table.md: budget, dataset, the final-policy table, the
    comparisons and the per-seed values."""
    b = sweep.budget
    rows = summary["rows"]
    seeds_done = {a: len(r["seeds"]) for a, r in rows.items()}
    total_seconds = sum(s for r in rows.values() for s in r["seconds"])
    lines = [
        f"Online budget {sweep.online_steps:,} env steps per trial (the paper: "
        f"{_paper_budget(sweep):,}); {sweep.seeds} seeds asked, finished per algorithm: "
        + ", ".join(f"{a} {n}" for a, n in seeds_done.items())
        + ".",
        (
            f"Pre-training: {b.offline_updates} updates of {b.batch_size} episodes "
            f"(`cql_sampler={b.cql_sampler}`); online "
            if sweep.uses_dataset
            else "Online "
        )
        + f"batches of {b.batch_size}; {b.evals} evaluations of "
        f"{b.test_episodes} greedy episodes, final policy on {b.final_test_episodes}. "
        f"Online trials' wall-clock sum: {total_seconds / 60:.1f} min.",
        *dataset_lines(out, sweep),
        "",
        "Final policy (not the best one). Median and IQM over seeds, 95% stratified bootstrap intervals "
        f"({b.bootstrap_reps} resamples). Drop = lowest test return over the first {b.drop_window} online "
        "evaluations minus the offline policy's (mean over seeds); lowest = the same over every online "
        "evaluation. Steps to "
        f"{b.target_win_rate:g} = median env steps of the first evaluation at or above that test win rate, "
        "over the seeds that reached it.",
        "",
        "| algorithm | seeds | final win rate, median | final win rate, IQM | mean return | offline win rate "
        f"(median) | drop after switch (return) | lowest (return) | steps to {b.target_win_rate:g} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algorithm, row in rows.items():
        if not row["seeds"]:
            lines.append(f"| {algorithm} | 0 | — | — | — | — | — | — | — |")
            continue
        offline = "—" if row["median_offline"] is None else f"{row['median_offline']:.3f}"
        steps = "—" if row["median_steps_to_target"] is None else f"{row['median_steps_to_target']:,.0f}"
        lines.append(
            f"| {algorithm} | {len(row['seeds'])} | {_cell(row['median'])} | {_cell(row['iqm'])} | "
            f"{_cell(row['mean_return'], 2)} | {offline} | {_cell(row['mean_drop'], 2)} | "
            f"{_cell(row['mean_lowest'], 2)} | "
            f"{steps} ({row['reached']}/{len(row['seeds'])} reached) |"
        )
    if summary["improvements"]:
        lines += [
            "",
            "Probability of improvement on the final test win rate: P(X > Y) + P(X = Y)/2 for a random "
            "seed of each, 95% bootstrap interval (each side resampled).",
            "",
            "| comparison | probability of improvement |",
            "|---|---|",
        ]
        for name, interval in summary["improvements"].items():
            lines.append(f"| {name} | {interval.text()} |")
    lines += [
        "",
        "Per seed, final test win rate:",
        "",
        "| algorithm | " + " | ".join(f"seed {s}" for s in range(sweep.seeds)) + " |",
        "|---|" + "---|" * sweep.seeds,
    ]
    for algorithm, row in rows.items():
        by_seed = dict(zip(row["seeds"], row["final_win_rate"], strict=True))
        cells = [f"{by_seed[s]:.3f}" if s in by_seed else "—" for s in range(sweep.seeds)]
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return lines


def _paper_budget(sweep: Sweep) -> int:
    from common.config.presets import map_hyperparameters

    return map_hyperparameters(sweep.map_name).online_env_steps


# --- all of it -----------------------------------------------------------------------------------------


def _jsonable(summary: dict) -> dict:
    def convert(value):
        if isinstance(value, Interval):
            return {"point": value.point, "low": value.low, "high": value.high}
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    return convert(summary)


def write_report(out: Path, sweep: Sweep) -> dict:
    """Write results.json, summary.json, table.md and the curves from the finished online trials."""
    runs = load_runs(out, sweep)
    write_json(out / "results.json", marl_eval_results(sweep, runs))
    summary = summarize(sweep, runs)
    offline = summarize_offline(sweep, load_pretrainings(out, sweep))
    write_json(
        out / "summary.json", {"sweep": sweep.to_json(), **_jsonable(summary), "offline": _jsonable(offline)}
    )
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(table_markdown(out, sweep, summary, offline))
    if any(runs.values()):
        plot_curves(out, sweep, runs)
    return summary
