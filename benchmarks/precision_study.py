"""Does QMIX learn the same in bf16 as in fp32? QMIX from scratch on lite 3m, both precisions, over
seeds, with the one-process trainer (same seed -> same battles and exploration in both).

    python benchmarks/precision_study.py [--seeds 3] [--steps 30000] [--jobs 1] [--runs DIR] [--out DIR]

Each run's directory goes under --runs (default runs/precision_3m); one that holds its final
evaluation is skipped, so rerunning the command resumes a stopped study. Writes summary.json,
summary.md and curves.png (mean test win rate over seeds with a 95% t-interval band) into --out
(default docs/results/precision_3m).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.stats import t_interval  # noqa: E402

MAP = "3m"
PRECISIONS = ("fp32", "bf16")


def trial_name(precision: str, seed: int) -> str:
    return f"qmix_{precision}_s{seed}"


def trial_config(runs: Path, precision: str, seed: int, steps: int):
    from common.config import resolve_config

    settings = {
        "run.seed": seed,
        "env.seed": seed,
        "run.run_dir": str(runs),
        "run.name": trial_name(precision, seed),
        "run.online_env_steps": steps,
        "run.eval_interval_steps": max(1, steps // 10),
        "run.log_interval_s": 60,
        "actor.test_episodes": 32,
        "actor.final_test_episodes": 320,
        "actor.epsilon_anneal_steps": steps // 3,
        "learner.batch_size": 32,
        "learner.precision": precision,
    }
    return resolve_config(
        map_name=MAP, dataset=None, method="qmix", overrides=[f"{k}={v}" for k, v in settings.items()]
    )


def records(runs: Path, name: str, kind: str) -> list[dict]:
    path = runs / name / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r.get("kind") == kind]


def run_trial(runs: str, precision: str, seed: int, steps: int) -> tuple[str, float]:
    import torch

    from deploy.single_process import train_sync

    torch.set_num_threads(1)
    runs_dir, name = Path(runs), trial_name(precision, seed)
    shutil.rmtree(runs_dir / name, ignore_errors=True)  # an unfinished trial starts over
    start = time.monotonic()
    train_sync(trial_config(runs_dir, precision, seed, steps), run_dir=runs_dir / name, progress=False)
    return name, time.monotonic() - start


def summarize(runs: Path, seeds: list[int], steps: int) -> dict:
    summary: dict = {"map": MAP, "online_env_steps": steps, "seeds": seeds, "precisions": {}}
    for precision in PRECISIONS:
        per_seed = {}
        for seed in seeds:
            name = trial_name(precision, seed)
            final = records(runs, name, "final_eval")
            if final:
                curve = [(e["env_steps"], e["win_rate"]) for e in records(runs, name, "eval")]
                per_seed[seed] = {
                    "final": final[-1]["win_rate"],
                    "episodes": final[-1]["episodes"],
                    "curve": curve,
                }
        finals = [v["final"] for v in per_seed.values()]
        summary["precisions"][precision] = {
            "per_seed": per_seed,
            "final_across_seeds": t_interval(finals) if len(finals) > 1 else None,
        }
    fp32, bf16 = (summary["precisions"][p]["per_seed"] for p in PRECISIONS)
    paired = sorted(set(fp32) & set(bf16))
    if len(paired) > 1:
        summary["bf16_minus_fp32_paired"] = t_interval([bf16[s]["final"] - fp32[s]["final"] for s in paired])
    return summary


def write_outputs(out: Path, summary: dict, command: str) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# QMIX from scratch on lite {MAP}: bf16 against fp32",
        "",
        f"`{command}`; {summary['online_env_steps']:,} env steps, batch 32, one torch thread,",
        "final policy on 320 greedy test episodes. Mean over seeds [95% t-interval]:",
        "",
        "| precision | seeds | final test win rate | per seed |",
        "|---|---|---|---|",
    ]
    for precision in PRECISIONS:
        block = summary["precisions"][precision]
        stats = block["final_across_seeds"]
        cell = f"{stats[0]:.3f} [{stats[1]:.3f}, {stats[2]:.3f}]" if stats else "-"
        seeds = ", ".join(f"{v['final']:.3f}" for v in block["per_seed"].values())
        lines.append(f"| {precision} | {len(block['per_seed'])} | {cell} | {seeds} |")
    if "bf16_minus_fp32_paired" in summary:
        m, lo, hi = summary["bf16_minus_fp32_paired"]
        lines += ["", f"bf16 - fp32, paired by seed: {m:+.3f} [{lo:+.3f}, {hi:+.3f}]."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(out, summary)


def plot(out: Path, summary: dict) -> None:
    from deploy.studies.curves import plot_mean_curves

    series = {p: [v["curve"] for v in summary["precisions"][p]["per_seed"].values()] for p in PRECISIONS}
    plot_mean_curves(
        out / "curves.png",
        series,
        xlabel="environment steps",
        ylabel="test win rate (32 episodes)",
        title=f"QMIX from scratch, lite {MAP}: mean over seeds, 95% t-interval",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30000, help="env steps per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--runs", default="runs/precision_3m", help="the runs' directories")
    parser.add_argument("--out", default=str(ROOT / "docs/results/precision_3m"), help="summary and curves")
    args = parser.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    command = "python benchmarks/precision_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    todo = [(p, s) for s in seeds for p in PRECISIONS if not records(runs, trial_name(p, s), "final_eval")]
    print(f"precision study: {len(seeds) * len(PRECISIONS)} runs, {len(todo)} to run", flush=True)
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_trial, str(runs), p, s, args.steps) for p, s in todo]
        for done, future in enumerate(as_completed(futures), 1):
            name, seconds = future.result()
            rate = (time.monotonic() - start) / done
            print(
                f"  {name} done in {seconds:.0f} s; {done}/{len(todo)},"
                f" ETA {rate * (len(todo) - done):.0f} s",
                flush=True,
            )
            write_outputs(out, summarize(runs, seeds, args.steps), command.strip())
    write_outputs(out, summarize(runs, seeds, args.steps), command.strip())
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
