"""Actor speed: env-steps/s with inference, exploration and episode writing against the raw world in
the same run, for each acting back-end (`actor.inference`: numpy, the old default; torch; tiles, one
kernel call per step with bf16 products on AMX tiles, where the CPU has them), and end-to-end
env-steps/s of `ovmse run`.

Part 1 (one process, one torch thread, as in an actor process): the lite world alone with random
actions, then the actor loop (agent network on the CPU, decentralized SE, episodes recorded and
written to an in-process Reverb server), numpy and torch measured alternately. Part 2 starts the
whole embedded system (QMIX from scratch, so no dataset is needed) and reads the learner's env-step
count; it is bound by the learner's update rate, because the replay server's rate limiter holds
actors to the synchronous algorithm's ratio: lite 3m with 1 and 2 actors, and lite 3s5z at the
paper's ratio (batch 128, an update per two episodes) before (numpy acting, fp32 learner through
nn.GRU) and after (`actor.inference=auto`, `learner.precision=auto`: tiles acting and a bf16 learner
where the CPU has AMX).
Results: docs/bench/actor.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write  # noqa: E402

from actors import tiles_agent  # noqa: E402
from common.config import resolve_config  # noqa: E402
from common.envs.lite import LiteBatchEnv  # noqa: E402
from deploy.builder import Builder  # noqa: E402
from learner.qmix_learner import cpu_bf16_flags  # noqa: E402

MAP = "3s5z"
BATTLES = (16, 64)


def raw_world(seconds: float, battles: int = 16) -> float:
    env = LiteBatchEnv(MAP, num_envs=battles, seed=0)
    rng = np.random.default_rng(0)
    obs = env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        noise = np.where(obs.avail, rng.random(obs.avail.shape), -1.0)
        obs = env.step(noise.argmax(-1)).next
        steps += battles
    return steps / (time.perf_counter() - start)


def actor_loop(seconds: float, write: bool, battles: int = 16, inference: str = "torch") -> float:
    cfg = resolve_config(
        map_name=MAP,
        method="qmix",
        overrides=[
            f"actor.inference={inference}",
            f"actor.envs_per_actor={battles}",
            "actor.exploration=decentralized_se",
            "env.seed=0",
            # No learner samples here, so the rate limiter must not hold the writer back.
            "replay.online_capacity=100000",
            "replay.samples_per_insert=1",
            "replay.rate_limiter_error_buffer=1e9",
        ],
    )
    builder = Builder(cfg)
    worker = builder.actor_worker(0)
    server = builder.replay_server(dataset=None, port=0) if write else None
    writer = builder.episode_writer(server.address) if write else None
    try:
        worker.reset()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for episode in worker.step(0.5):
                if writer:
                    writer.write(episode)
        return worker.env_steps / (time.perf_counter() - start)
    finally:
        if writer:
            writer.close()
        if server:
            server.stop()


def end_to_end(
    actors: int, steps: int, map_name: str = "3m", extra: tuple[str, ...] = (), env: dict | None = None
) -> float:
    """Env steps/s of an embedded `ovmse run`'s online phase; `env` is set for its processes."""

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return _end_to_end(actors, steps, map_name, extra)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _end_to_end(actors: int, steps: int, map_name: str, extra: tuple[str, ...]) -> float:
    from deploy.embedded import EmbeddedRun, execute

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(
            map_name=map_name,
            method="qmix",
            overrides=[
                f"run.run_dir={tmp}",
                f"actor.num_actors={actors}",
                "actor.envs_per_actor=4",
                f"run.online_env_steps={steps}",
                f"run.eval_interval_steps={steps}",
                "learner.batch_size=32",
                "actor.test_episodes=8",
                "actor.final_test_episodes=0",
                "run.log_interval_s=1000",
                *extra,
            ],
        )
        run = EmbeddedRun.prepare(cfg)
        if execute(run) != 0:
            raise RuntimeError(f"embedded run failed; see {run.run_dir / 'logs'}")
        train = run.evals("train")
        progress = json.loads((run.run_dir / "learner_progress.json").read_text())
        first = next((r for r in train if r["env_steps"] > 0), None)
        if first is None:
            return float("nan")
        # Rate over the online phase, from the first logged update to the end.
        return (progress["env_steps"] - first["env_steps"]) / (progress["time"] - first["time"])


# The paper's ratio on lite 3s5z: batches of 128 episodes, one update per two new episodes.
PAPER_RATIO = ("learner.batch_size=128", "learner.batch_size_run=2", "actor.envs_per_actor=8")
BEFORE = ("actor.inference=numpy", "learner.precision=fp32")
BEFORE_ENV = {"OVMSE_FUSED_GRU": "0"}  # the learner's recurrence through nn.GRU, as before the kernel
AFTER = ("actor.inference=auto", "learner.precision=auto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--skip-end-to-end", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as in an actor process
    # Rounds; within one, each back end's two runs sit between two runs of the raw world, and its
    # ratios are taken against the mean of those two: drift in the shared machine's load over the
    # minutes a row takes then does not land on one back end. Reported: medians over the rounds.
    rounds, seconds = (2, 1.5) if args.quick else (4, 2.5)
    back_ends = ("numpy", "torch", "tiles") if tiles_agent.available() else ("numpy", "torch")
    acting_rows = []
    for battles in BATTLES:
        raws: list[float] = []
        per_round: dict = {
            inf: {"acting": [], "acting_writing": [], "share": [], "share_w": []} for inf in back_ends
        }
        for _ in range(rounds):
            before = raw_world(seconds, battles)
            raws.append(before)
            for inf in back_ends:
                acting = actor_loop(seconds, False, battles, inf)
                acting_writing = actor_loop(seconds, True, battles, inf)
                after = raw_world(seconds, battles)
                raws.append(after)
                around = (before + after) / 2
                got = per_round[inf]
                got["acting"].append(acting)
                got["acting_writing"].append(acting_writing)
                got["share"].append(acting / around)
                got["share_w"].append(acting_writing / around)
                before = after
        row: dict = {"battles": battles, "raw": float(np.median(raws)), "rounds": rounds}
        for inf, got in per_round.items():
            row[inf] = {
                "acting": float(np.median(got["acting"])),
                "acting_writing": float(np.median(got["acting_writing"])),
                "acting_share": float(np.median(got["share"])),
                "acting_writing_share": float(np.median(got["share_w"])),
            }
            row[inf]["overhead"] = 1 - row[inf]["acting_writing_share"]
        acting_rows.append(row)
        print(
            f"{MAP}, {battles} battles: raw world {row['raw']:,.0f} env-steps/s; "
            + "; ".join(
                f"{inf}: acting {row[inf]['acting']:,.0f}, + writing {row[inf]['acting_writing']:,.0f} "
                f"(overhead {row[inf]['overhead']:.0%})"
                for inf in back_ends
            ),
            flush=True,
        )
    e2e: dict = {}
    if not args.skip_end_to_end:
        steps = 3000 if args.quick else 10000
        e2e["3m"] = {n: end_to_end(n, steps) for n in (1, 2)}
        print(
            f"ovmse run on lite 3m (QMIX, batch 32): 1 actor {e2e['3m'][1]:,.0f} env-steps/s, "
            f"2 actors {e2e['3m'][2]:,.0f} env-steps/s",
            flush=True,
        )
        # Past the 128 episodes the first batch needs, then long enough to time the online phase.
        steps = 14000 if args.quick else 16000  # the learner logs every 20 updates: 2+ records
        e2e["3s5z"] = {
            label: end_to_end(2, steps, "3s5z", PAPER_RATIO + extra, env)
            for label, extra, env in (("before", BEFORE, BEFORE_ENV), ("after", AFTER, {}))
        }
        print(
            f"ovmse run on lite 3s5z (QMIX, batch 128, 2 episodes per update, 2 actors): before "
            f"{e2e['3s5z']['before']:,.0f} env-steps/s, after {e2e['3s5z']['after']:,.0f}",
            flush=True,
        )
    host = machine()
    flags = " ".join(cpu_bf16_flags())
    lines = [
        "# Actor speed",
        "",
        f"`python benchmarks/bench_actor.py{' --quick' if args.quick else ''}` — {host['cpu']} "
        f"(bf16 flags: {flags or 'none'}), {host['cores']} cores, {host['date']}, load average "
        f"{host['load_average_1m']} when written (other work on the machine slows every row; compare "
        "within a row).",
        "",
        f"## Acting and writing against the raw world ({MAP}, one process, one torch thread)",
        "",
        "| battles per actor | raw world | "
        + " | ".join(f"{inf} acting | {inf} + writing | overhead" for inf in back_ends)
        + " |",
        "|---|---|" + "---|---|---|" * len(back_ends),
    ]
    for r in acting_rows:
        cells = [f"{r['battles']}", f"{r['raw']:,.0f}"]
        for inf in back_ends:
            x = r[inf]
            cells += [
                f"{x['acting']:,.0f} ({x['acting_share']:.0%})",
                f"{x['acting_writing']:,.0f} ({x['acting_writing_share']:.0%})",
                f"{x['overhead']:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Env-steps/s, medians over rounds; in brackets, the median over rounds of each speed against "
        "the raw world's measured just before and after that back end's two runs (the raw column is "
        "the median of all those runs), and overhead is 1 minus the acting + writing share. Target: "
        "acting and writing cost at most 20% of the raw world's speed. numpy was "
        "the acting forward pass before (`actors/numpy_agent.py`); torch (`actors/torch_agent.py`) runs "
        "the same step through oneDNN in fp32; tiles (`actors/tiles_agent.py`) runs fc1, the GRU cell "
        "and fc2 in one call of the compiled kernel, bf16 products on AMX tiles (what "
        "`actor.inference=auto` picks where the CPU has them and the learner computes in bf16). "
        "Episodes are recorded with vectorised writes (`EpisodeBuilder`); the rest is exploration and "
        "Reverb's writer.",
        "",
    ]
    if e2e:
        lines += [
            "## End to end: `ovmse run` (replay, learner, actors, evaluator as processes)",
            "",
            "| run | env-steps/s (online phase) |",
            "|---|---|",
            f"| lite 3m, QMIX, batch 32, 1 actor x 4 battles | {e2e['3m'][1]:,.0f} |",
            f"| lite 3m, QMIX, batch 32, 2 actors x 4 battles | {e2e['3m'][2]:,.0f} |",
            f"| lite 3s5z, QMIX, batch 128, 2 episodes per update, 2 actors x 8 battles: before "
            f"(numpy acting, fp32 learner through nn.GRU) | {e2e['3s5z']['before']:,.0f} |",
            f"| the same, after (`actor.inference=auto`, `learner.precision=auto`: "
            f"{'tiles' if tiles_agent.available() else 'torch'} acting, fused GRU) |"
            f" {e2e['3s5z']['after']:,.0f} |",
            "",
            "The replay server's samples-per-insert limiter holds actors to one learner update per "
            "`batch_size_run` episodes (the synchronous algorithm's ratio), so on a 2-core machine the "
            "CPU learner, not the actors, sets the pace; more actors only help once the learner has its "
            "own cores or a GPU.",
            "",
        ]
    results = {"map": MAP, "cpu_bf16_flags": flags, "acting": acting_rows, "end_to_end": e2e}
    write("actor", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
