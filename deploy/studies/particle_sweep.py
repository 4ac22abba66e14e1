"""`ovmse reproduce --map simple_spread`: method x seed offline trials on one particle dataset
(`deploy/studies/particle_offline.py`, each resumable), `--jobs` at a time, then results.json
(marl-eval's raw format), table.md and curves_score.png (`deploy/studies/particle_report.py`); a
rerun in the same --out finishes only what is missing."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from common.errors import InputError
from deploy.studies.particle_commands import (
    SWEEP_FILE,
    budget_from_args,
    method_named,
    omsd_config_from_args,
    refuse_flags,
    resolve_dataset,
    same_request,
    say,
)

# SMAC's reproduce options that mean nothing here: (flag, attribute).
SMAC_SWEEP_FLAGS = (
    ("--config", "config"),
    ("--set", "overrides"),
    ("--method", "method"),
    ("--online-steps", "online_steps"),
    ("--mixing-ratios", "mixing_ratios"),
    ("--ray", "ray"),
    ("--behaviour-win-rate", "behaviour_win_rate"),
    ("--behaviour-return", "behaviour_return"),
    ("--behaviour-max-steps", "behaviour_max_steps"),
    ("--dataset-episodes", "dataset_episodes"),
    ("--offline-updates", "offline_updates"),
    ("--evals", "evals"),
    ("--test-episodes", "test_episodes"),
    ("--final-test-episodes", "final_test_episodes"),
    ("--target-win-rate", "target_win_rate"),
)


def parse_methods(text: str | None) -> tuple[str, ...]:
    from learner.continuous_registry import CONTINUOUS_METHOD_NAMES

    if text is None:
        return CONTINUOUS_METHOD_NAMES
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise InputError("--methods: give at least one method")
    for method in methods:
        method_named(method, "--methods")
    if len(set(methods)) != len(methods):
        raise InputError(f"--methods: a method is listed twice in {text!r}")
    return methods


def trial_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"  # particle_offline's own `--out OUT` layout


def reproduce(args: argparse.Namespace, methods_given: bool) -> int:
    """`ovmse reproduce --map simple_spread`: method x seed offline trials, resumable, then results.json,
    table.md and curves_score.png."""
    from deploy.studies.particle_report import write_particle_report

    refuse_flags(args, SMAC_SWEEP_FLAGS, f"a SMAC sweep's option; {args.map}'s trials do not take it")
    methods = parse_methods(args.methods if methods_given else None)
    out = Path(args.out) if args.out else None
    if getattr(args, "report_only", False):
        if out is None or not (out / SWEEP_FILE).is_file():
            raise InputError(f"--report-only: no particle sweep in --out {out} ({SWEEP_FILE} is missing)")
        sweep = json.loads((out / SWEEP_FILE).read_text())
        write_particle_report(out, sweep)
        print((out / "table.md").read_text())
        return 0
    path, card = resolve_dataset(args, args.map)
    budget = budget_from_args(args)
    if args.jobs > 1 and args.threads > 1:
        raise InputError("--threads: with --jobs above 1 each particle trial runs on one thread")
    out = out or Path("runs") / "reproduce" / f"{args.map}_{card['kind']}"
    out.mkdir(parents=True, exist_ok=True)
    omsd = omsd_config_from_args(args)
    settings = {
        "map": args.map,
        "dataset": str(path),
        "dataset_kind": card["kind"],
        "budget": dataclasses.asdict(budget),
        "beta": omsd.beta,
    }
    same_request(out, SWEEP_FILE, settings, "a particle sweep")
    sweep = {**settings, "methods": list(methods), "seeds": args.seeds}
    trials = [(m, s) for m in methods for s in range(args.seeds)]
    pending = [(m, s) for m, s in trials if not (out / trial_name(m, s) / "done.json").is_file()]
    say(
        f"reproduce {args.map} {card['kind']}: {len(trials)} trials ({', '.join(methods)} x {args.seeds} "
        f"seeds), {len(trials) - len(pending)} finished already, {len(pending)} to run, "
        f"{args.jobs} at a time; into {out}"
    )
    from deploy.studies.pools import sweep_lock
    from deploy.studies.sweep import ReproduceError

    try:
        with sweep_lock(out):
            try:
                status = _run_trials(
                    out,
                    path,
                    budget,
                    omsd,
                    pending,
                    len(trials),
                    args,
                    lambda: write_particle_report(out, sweep),
                )
            finally:  # a stopped sweep's finished trials are in its results too
                write_particle_report(out, sweep)
    except ReproduceError as error:
        raise InputError(str(error)) from None
    print((out / "table.md").read_text())
    print(f"results in {out}: results.json, table.md, curves_score.png")
    return status


REPORT_INTERVAL_S = 60.0  # a long sweep's results are rewritten after a trial at most this often


def _run_trials(out, dataset, budget, omsd, pending, total, args, report) -> int:
    """Run the `pending` (method, seed) trials: in this process (--jobs 1) or `--jobs` child
    processes; after each, `report()` and a line with the sweep's pace and ETA."""
    from deploy.studies.particle_offline import OfflineTrial, duration, run_trial

    started, finished, status = time.perf_counter(), 0, 0
    done_before = total - len(pending)
    reported = started

    def finished_one(name: str, ok: bool) -> None:
        nonlocal finished, reported
        finished += 1
        per_trial = (time.perf_counter() - started) / finished  # wall time: J trials run at once
        eta = per_trial * (len(pending) - finished)
        result = out / name / "done.json"
        score = (
            f"score {json.loads(result.read_text())['final_score']:.1f}"
            if ok and result.is_file()
            else "FAILED"
        )
        if time.perf_counter() - reported >= REPORT_INTERVAL_S:  # and always at the end
            report()
            reported = time.perf_counter()
        say(
            f"reproduce: {done_before + finished}/{total} trials finished ({name}: {score}); "
            f"{per_trial / 60:.1f} min of wall time per trial this run, ETA {duration(eta)}"
        )

    if args.jobs == 1:
        import torch

        torch.set_num_threads(args.threads)
        for method, seed in pending:
            trial = OfflineTrial(str(dataset), method, seed, budget, omsd)
            run_trial(trial, out / trial_name(method, seed), say)
            finished_one(trial_name(method, seed), True)
        return 0
    from deploy.studies.pools import LocalPool

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(budget).items()]
    by_name = {trial_name(m, s): (m, s) for m, s in pending}

    def command(name: str) -> list[str]:
        method, seed = by_name[name]
        return [
            "-m",
            "deploy.studies.particle_offline",
            f"--dataset={dataset}",
            f"--method={method}",
            f"--seeds={seed}",
            f"--out={out}",
            *flags,
            f"--beta={omsd.beta}",
        ]

    pool = LocalPool(out, args.jobs, command, logs=True)
    queue = list(by_name)
    try:
        while queue or pool.running:
            while queue and pool.slots > 0:
                pool.submit(queue.pop(0))
            for name, rc in pool.wait(1.0):
                if rc != 0:
                    status = 1
                    say(f"reproduce: {name} exited with status {rc}; its output: {pool.log_path(name)}")
                finished_one(name, rc == 0)
    finally:
        pool.close()
    return status
