"""Soak: a long embedded run (`ovmse run`, lite 3m, QMIX, two actors) watched from outside.

Every `--every` seconds it records each process's resident memory (VmRSS from /proc) and the replay
tables' sizes and insert/sample counts (a Reverb client on the run's replay port), plus the learner's
env-step and update counts. At the end it stops the run with SIGTERM and writes
docs/bench/soak.json, soak.md and soak.png (memory against time, one line per process).

"Stops growing after warm-up" is judged per process: the resident memory's growth over the second
half of the run against its value at half-time (the replay server is expected to grow until the
online table is full, then stay flat).

    python benchmarks/soak.py [--minutes 30] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS_BENCH, machine, write  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JOBS = ("replay-server", "learner", "evaluate", "actor --actor-id 0", "actor --actor-id 1")


def processes(config: str) -> dict[str, int]:
    """The run's processes by job, from their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if config not in cmdline:
            continue
        for job in JOBS:
            if f"deploy.cli {job} " in cmdline:
                found[job] = int(entry.name)
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def replay_tables(port: int) -> dict:
    from replay.server import table_stats
    from replay.tables import import_reverb

    try:
        stats = table_stats(import_reverb().Client(f"127.0.0.1:{port}"))
    except Exception:  # the server is restarting
        return {}
    return {name: {"size": s.size, "inserts": s.inserts, "samples": s.samples} for name, s in stats.items()}


def growth(series: list[tuple[float, float]]) -> float | None:
    """Resident memory's growth over the second half, relative to its value at half-time."""
    if len(series) < 4:
        return None
    half = series[len(series) // 2][1]
    return (series[-1][1] - half) / half if half else None


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for job in JOBS:
        points = [(s["t"] / 60, s["rss_mib"][job]) for s in samples if s["rss_mib"].get(job) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), label=job)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("soak: ovmse run, lite 3m, QMIX, 2 actors")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", default=str(DOCS_BENCH), help="where soak.json/.md/.png go")
    parser.add_argument(
        "--online-capacity", type=int, default=400, help="episodes; small, so the table fills early"
    )
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="ovmse-soak-"))
    argv = [
        sys.executable, "-m", "deploy.cli", "run", "--map", "3m", "--method", "qmix",
        "--set", f"run.run_dir={runs}", "--set", "run.name=soak", "--set", "run.online_env_steps=1000000000",
        "--set", "actor.num_actors=2", "--set", "actor.envs_per_actor=4", "--set", "learner.batch_size=32",
        "--set", f"replay.online_capacity={args.online_capacity}", "--set", "run.log_interval_s=60",
        "--set", "actor.test_episodes=16", "--set", "run.eval_interval_steps=20000",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    run_dir = runs / "soak"
    config = str(run_dir / "config.yaml")
    samples: list[dict] = []
    began = time.monotonic()
    deadline = began + args.minutes * 60
    try:
        while time.monotonic() < deadline and run.poll() is None:
            time.sleep(args.every)
            try:
                port = yaml.safe_load(Path(config).read_text())["replay"]["port"]
            except (OSError, KeyError, TypeError):
                continue
            try:
                progress = json.loads((run_dir / "learner_progress.json").read_text())
            except (OSError, ValueError):
                progress = {}
            pids = processes(config)
            sample = {
                "t": round(time.monotonic() - began, 1),
                "rss_mib": {job: rss_mib(pid) for job, pid in pids.items()},
                "tables": replay_tables(port),
                "env_steps": progress.get("env_steps"),
                "updates": progress.get("updates"),
            }
            samples.append(sample)
            elapsed = sample["t"]
            print(
                f"soak {elapsed / 60:5.1f}/{args.minutes:g} min | env steps {sample['env_steps']} | "
                f"updates {sample['updates']} | RSS "
                + ", ".join(
                    f"{job.split()[0]}{job.split()[-1] if 'actor' in job else ''} {mib:.0f}"
                    for job, mib in sample["rss_mib"].items()
                    if mib
                )
                + f" MiB | ETA {max(0, args.minutes * 60 - elapsed) / 60:.1f} min",
                flush=True,
            )
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for job in JOBS:
        series = [(s["t"], s["rss_mib"][job]) for s in samples if s["rss_mib"].get(job)]
        if series:
            g = growth(series)
            rows.append({
                "process": job, "start_mib": round(series[0][1], 1),
                "half_mib": round(series[len(series) // 2][1], 1), "end_mib": round(series[-1][1], 1),
                "second_half_growth": None if g is None else round(g, 4),
            })  # fmt: skip
    online = [s["tables"].get("online", {}) for s in samples if s["tables"]]
    last = samples[-1] if samples else {}
    host = machine()
    lines = [
        "# Soak",
        "",
        f"`python benchmarks/soak.py --minutes {args.minutes:g}` — {host['cpu']}, {host['cores']} cores, "
        f"{host['date']}, load average {host['load_average_1m']} at the end (other work shared the machine).",
        "",
        f"`ovmse run`, lite 3m, QMIX, 2 actors x 4 battles, online capacity {args.online_capacity:,} "
        "episodes; "
        f"{len(samples)} samples every {args.every:g} s; {last.get('env_steps')} env steps and "
        f"{last.get('updates')} updates by the end.",
        "",
        "| process | RSS at start (MiB) | at half-time | at the end | growth over the second half |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        g = "n/a" if r["second_half_growth"] is None else f"{100 * r['second_half_growth']:+.1f}%"
        lines.append(f"| {r['process']} | {r['start_mib']} | {r['half_mib']} | {r['end_mib']} | {g} |")
    if online:
        lines += [
            "",
            f"Online table: size {online[-1].get('size')} (capacity {args.online_capacity:,}) after "
            f"{online[-1].get('inserts')} inserts and {online[-1].get('samples')} samples; the most it held "
            f"was {max(o.get('size', 0) for o in online)}.",
        ]
    lines += ["", "![resident memory](soak.png)", ""]
    if samples:
        plot(samples, out / "soak.png")
    write("soak", {"minutes": args.minutes, "rows": rows, "samples": samples}, "\n".join(lines), out)
    print(f"wrote {out / 'soak.md'}")


if __name__ == "__main__":
    main()
