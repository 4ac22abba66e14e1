"""A small multi-seed study on the demo's world and data: pre-training repeated over seeds, then
OVMSE and Switch CQL fine-tuned from each seed's own checkpoint, with the one-process trainer.

    python -m deploy.studies.seed_study [--seeds 5] [--jobs 2] [--online-steps 30000] [--out runs/seed_study]

A sweep on the studies' machinery: its trials (`plan`), each in its own run directory and in its own
process, run by the loop of `deploy/studies/runner.py` on a local pool, an online trial once its
seed's pre-training has finished. A trial whose run directory already holds its final evaluation
is skipped, so a stopped study resumes where it stopped when the same command runs again. At the
end (and after each trial) it writes `summary.json`, `summary.md` and `curves.png` into the output
directory: per seed and across seeds, with 95% intervals (Wilson for one seed's win rate over its
test episodes; Student's t over seeds for means).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from common.config import resolve_config
from common.stats import t_interval, wilson_interval
from deploy.studies.curves import plot_mean_curves
from deploy.studies.demo import DEMO_MAP, SETTINGS
from deploy.studies.pools import LocalPool, sweep_lock
from deploy.studies.runner import run_sweep
from deploy.studies.sweep import ReproduceError, Trial, read_records

METHODS = ("ovmse", "switch_cql")
ENTRY_POINT = "deploy.studies.seed_study"


# --- the sweep -------------------------------------------------------------------------------------


def plan(seeds: list[int]) -> list[Trial]:
    """Every seed's pre-training, then each method fine-tuned from its seed's."""
    pretrainings = [Trial(f"pretrain_s{s}", "pretrain", s) for s in seeds]
    online = [
        Trial(f"{m}_s{s}", "online", s, m, m, needs=(f"pretrain_s{s}",)) for s in seeds for m in METHODS
    ]
    return pretrainings + online


def trial_named(name: str) -> Trial:
    """The trial called `name` ("pretrain_s3", "ovmse_s0", ...)."""
    kind, _, seed = name.rpartition("_s")
    if kind not in ("pretrain", *METHODS) or not seed.isdigit():
        raise ValueError(f"no seed-study trial is called {name!r}")
    return next(t for t in plan([int(seed)]) if t.name == name)


def study_config(out: Path, trial: Trial, online_steps: int):
    """The demo's settings, seeded; final evaluations of the paper's 640 episodes."""
    settings = {k: v for k, v in SETTINGS.items() if "." in k}
    settings.update(
        {
            "run.online_env_steps": online_steps,
            "actor.final_test_episodes": 640,
            "run.seed": trial.seed,
            "run.dataset": str(out / f"{DEMO_MAP}_heuristic.h5"),
            "run.run_dir": str(out),
            "run.name": trial.name,
            "run.log_interval_s": 60,
            "run.offline_eval_interval": 100,
        }
    )
    if trial.kind != "pretrain":
        settings["run.init_checkpoint"] = str(out / f"pretrain_s{trial.seed}" / "checkpoints" / "offline.pt")
    method = trial.method or "ovmse"
    overrides = [f"{k}={v}" for k, v in settings.items()]
    return resolve_config(map_name=DEMO_MAP, dataset="medium", method=method, overrides=overrides)


def finished(out: Path, name: str) -> bool:
    """The study's mark of a finished trial: a pre-training's evaluation and checkpoint, an online
    trial's final evaluation."""
    path = out / name / "metrics.jsonl"
    if not path.exists():
        return False
    if not name.startswith("pretrain_"):
        return '"kind": "final_eval"' in path.read_text()
    return '"kind": "eval"' in path.read_text() and (out / name / "checkpoints/offline.pt").exists()


def run_trial(out: str, trial: Trial, online_steps: int, threads: int) -> str:
    import shutil

    import torch

    from deploy.single_process import pretrain, train_sync

    torch.set_num_threads(threads)
    out_dir = Path(out)
    shutil.rmtree(out_dir / trial.name, ignore_errors=True)  # an unfinished trial starts over
    cfg = study_config(out_dir, trial, online_steps)
    if trial.kind == "pretrain":
        pretrain(cfg, run_dir=out_dir / trial.name, progress=False)
    else:
        train_sync(cfg, run_dir=out_dir / trial.name, progress=False)
    return trial.name


def trial_args(out: Path, name: str, online_steps: int) -> list[str]:
    """The arguments of the Python process that runs one trial (the pool's command)."""
    return ["-m", ENTRY_POINT, "trial", str(out), name, "--online-steps", str(online_steps)]


def ensure_dataset(out: Path) -> None:
    from deploy.recipes import CollectRequest, collect_dataset

    path = out / f"{DEMO_MAP}_heuristic.h5"
    if path.exists():
        return
    cfg = study_config(out, trial_named("pretrain_s0"), 0)
    collect_dataset(
        cfg,
        CollectRequest(
            out=str(path),
            episodes=SETTINGS["dataset_episodes"],
            policy="heuristic",
            epsilon=SETTINGS["dataset_epsilon"],
            num_envs=32,
        ),
    )


# --- statistics ------------------------------------------------------------------------------------


def summarize(out: Path, seeds: list[int]) -> dict:
    summary: dict = {"seeds": seeds, "offline": {}, "online": {}}
    offline = []
    for seed in seeds:
        final = read_records(out / f"pretrain_s{seed}", "eval")
        if final:
            row = final[-1]
            n = int(row.get("episodes", 0))
            offline.append(row["win_rate"])
            summary["offline"][seed] = {
                "win_rate": row["win_rate"],
                "episodes": n,
                "wilson": wilson_interval(round(row["win_rate"] * n), n),
            }
    if offline:
        summary["offline"]["across_seeds"] = t_interval(offline)
    for method in METHODS:
        per_seed = {}
        for seed in seeds:
            evals = read_records(out / f"{method}_s{seed}", "eval")
            final = read_records(out / f"{method}_s{seed}", "final_eval")
            if not final:
                continue
            start, online = evals[0], evals[1:]
            per_seed[seed] = {
                "start": start["win_rate"],
                "first_online": online[0]["win_rate"] if online else float("nan"),
                "lowest_first_3": min(e["win_rate"] for e in online[:3]) if online else float("nan"),
                "final": final[-1]["win_rate"],
                "final_episodes": final[-1]["episodes"],
                "curve": [(e["env_steps"], e["win_rate"]) for e in evals],
            }
        stats = {
            key: t_interval([v[key] for v in per_seed.values()])
            for key in ("start", "first_online", "lowest_first_3", "final")
            if per_seed
        }
        summary["online"][method] = {"per_seed": per_seed, "across_seeds": stats}
    return summary


def write_summary(out: Path, seeds: list[int], online_steps: int) -> dict:
    summary = summarize(out, seeds)
    summary["online_env_steps"] = online_steps
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Seed study: lite {DEMO_MAP}, demo data and settings, {len(seeds)} seeds",
        "",
        "Offline pre-training, final test win rate (episodes each; Wilson 95% interval):",
        "",
        "| seed | win rate | 95% interval | episodes |",
        "|---|---|---|---|",
    ]
    for seed in seeds:
        row = summary["offline"].get(seed)
        if row:
            lo, hi = row["wilson"]
            lines.append(f"| {seed} | {row['win_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {row['episodes']} |")
    if "across_seeds" in summary["offline"]:
        m, lo, hi = summary["offline"]["across_seeds"]
        lines += ["", f"Across seeds: mean {m:.3f}, 95% t-interval [{lo:.3f}, {hi:.3f}].", ""]
    lines += [
        f"Online fine-tuning from each seed's own checkpoint, {online_steps:,} env steps, one-process "
        "trainer. Mean over seeds [95% t-interval]:",
        "",
        "| method | seeds | start | first online eval | lowest of first 3 online evals | final (640 ep) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        block = summary["online"][method]
        stats = block["across_seeds"]
        if not stats:
            continue
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (stats[k] for k in stats)]
        lines.append(f"| {method} | {len(block['per_seed'])} | " + " | ".join(cells) + " |")
    first, second = (summary["online"][m]["per_seed"] for m in METHODS)
    paired = sorted(set(first) & set(second))
    if len(paired) > 1:
        cells = []
        for key in ("start", "first_online", "lowest_first_3", "final"):
            diffs = [first[s][key] - second[s][key] for s in paired]
            m, lo, hi = t_interval(diffs)
            cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}], higher in {sum(d > 0 for d in diffs)}")
        label = f"{METHODS[0]} - {METHODS[1]}, paired by seed"
        lines.append(f"| {label} | {len(paired)} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(out, summary)
    return summary


def plot(out: Path, summary: dict) -> None:
    online = summary["online"]
    series = {method: [v["curve"] for v in online[method]["per_seed"].values()] for method in METHODS}
    plot_mean_curves(
        out / "curves.png",
        series,
        xlabel="environment steps (online)",
        ylabel="test win rate",
        title=f"lite {DEMO_MAP}: mean over seeds, 95% t-interval",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once (each on one torch thread)")
    parser.add_argument("--online-steps", type=int, default=SETTINGS["run.online_env_steps"])
    parser.add_argument("--out", default="runs/seed_study")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    try:
        with sweep_lock(out):
            ensure_dataset(out)
            command = functools.partial(trial_args, out, online_steps=args.online_steps)
            status = run_sweep(
                out,
                plan(seeds),
                LocalPool(out, args.jobs, command, logs=False),
                report=lambda: write_summary(out, seeds, args.online_steps),
                label="seed study",
                finished=finished,
            )
    except ReproduceError as error:
        print(f"seed study: {error}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    return status


def _trial_main(argv: list[str]) -> int:
    """`python -m deploy.studies.seed_study trial OUT NAME`: one trial, in this process."""
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_POINT} trial")
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--online-steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    run_trial(args.out, trial_named(args.name), args.online_steps, args.threads)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["trial"]:
        raise SystemExit(_trial_main(sys.argv[2:]))
    raise SystemExit(main())
