"""A small multi-seed study on the demo's world and data: pre-training repeated over seeds, then
OVMSE and Switch CQL fine-tuned from each seed's own checkpoint, with the one-process trainer.

    python -m deploy.seed_study [--seeds 5] [--jobs 2] [--online-steps 30000] [--out runs/seed_study]

Everything a trial writes lands in its own run directory; a trial whose run directory already holds
its final evaluation is skipped, so a stopped study resumes where it stopped when the same command
runs again. At the end (and whenever it is rerun) it writes `summary.json`, `summary.md` and
`curves.png` into the output directory: per seed and across seeds, with 95% intervals (Wilson for
one seed's win rate over its test episodes; Student's t over seeds for means).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from common.config import resolve_config
from common.stats import T95, Z95, t_interval, wilson_interval
from deploy.demo import DEMO_MAP, SETTINGS

METHODS = ("ovmse", "switch_cql")


@dataclass(frozen=True)
class Trial:
    kind: str  # "pretrain" | a method
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}_s{self.seed}"


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
    method = "ovmse" if trial.kind == "pretrain" else trial.kind
    overrides = [f"{k}={v}" for k, v in settings.items()]
    return resolve_config(map_name=DEMO_MAP, dataset="medium", method=method, overrides=overrides)


def finished(out: Path, trial: Trial) -> bool:
    path = out / trial.name / "metrics.jsonl"
    if not path.exists():
        return False
    if trial.kind != "pretrain":
        return '"kind": "final_eval"' in path.read_text()
    return '"kind": "eval"' in path.read_text() and (out / trial.name / "checkpoints/offline.pt").exists()


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


def ensure_dataset(out: Path) -> None:
    from deploy.recipes import CollectRequest, collect_dataset

    path = out / f"{DEMO_MAP}_heuristic.h5"
    if path.exists():
        return
    cfg = study_config(out, Trial("pretrain", 0), 0)
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


def records(out: Path, name: str, kind: str) -> list[dict]:
    path = out / name / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r.get("kind") == kind]


def summarize(out: Path, seeds: list[int]) -> dict:
    summary: dict = {"seeds": seeds, "offline": {}, "online": {}}
    offline = []
    for seed in seeds:
        final = records(out, f"pretrain_s{seed}", "eval")
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
            evals = records(out, f"{method}_s{seed}", "eval")
            final = records(out, f"{method}_s{seed}", "final_eval")
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


def plot_mean_curves(path: Path, series: dict[str, list], xlabel: str, ylabel: str, title: str) -> None:
    """One line per label: the mean over its seeds' curves ([(step, value)] each, cut to the
    shortest) with a 95% t-interval band, written as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, curves in series.items():
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [c[0] for c in curves[0][:length]]
        values = np.array([[c[i][1] for i in range(length)] for c in curves])
        mean = values.mean(axis=0)
        n = len(curves)
        half = T95.get(n - 1, Z95) * values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else 0 * mean
        ax.plot(steps, mean, marker="o", ms=3, label=f"{label} ({n} seeds)")
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    ensure_dataset(out)
    stages = [[Trial("pretrain", s) for s in seeds], [Trial(m, s) for s in seeds for m in METHODS]]
    total = sum(len(stage) for stage in stages)
    done = sum(finished(out, t) for stage in stages for t in stage)
    began, done_here = time.monotonic(), 0
    for stage in stages:
        todo = [t for t in stage if not finished(out, t)]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_trial, str(out), t, args.online_steps, 1) for t in todo]
            for future in as_completed(futures):
                name = future.result()
                done, done_here = done + 1, done_here + 1
                rate = done_here / (time.monotonic() - began)
                eta = (total - done) / rate if rate else float("inf")
                print(f"seed study: {name} done; {done}/{total} trials, ETA {eta / 60:.0f} min", flush=True)
                write_summary(out, seeds, args.online_steps)
    write_summary(out, seeds, args.online_steps)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
