"""Actor speed: env-steps/s with inference, exploration and episode writing against the raw world in
the same run, and end-to-end env-steps/s of `ovmse run` with 1 and 2 actors.

Part 1 (one process, one core's worth of work): the lite world alone with random actions, then the
actor loop (agent network on the CPU, decentralized SE, episodes recorded and written to an
in-process Reverb server). Part 2 starts the whole embedded system (QMIX from scratch, so no dataset
is needed) and reads the learner's env-step count; it is bound by the learner's update rate,
because the replay server's rate limiter holds actors to the synchronous algorithm's ratio.
Results: docs/bench/actor.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write  # noqa: E402

from common.config import resolve_config  # noqa: E402
from common.envs.lite import LiteBatchEnv  # noqa: E402
from deploy.builder import Builder  # noqa: E402

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


def actor_loop(seconds: float, write: bool, battles: int = 16) -> float:
    cfg = resolve_config(
        map_name=MAP,
        method="qmix",
        overrides=[
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


def end_to_end(actors: int, steps: int) -> float:
    from deploy.embedded import EmbeddedRun, execute

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(
            map_name="3m",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else 8.0
    acting_rows = []
    for battles in BATTLES:
        raw = raw_world(seconds, battles)
        acting = actor_loop(seconds, False, battles)
        writing = actor_loop(seconds, True, battles)
        acting_rows.append(
            {
                "battles": battles,
                "raw": raw,
                "acting": acting,
                "acting_writing": writing,
                "overhead": 1 - writing / raw,
            }
        )
        print(
            f"{MAP}, {battles} battles: raw world {raw:,.0f} env-steps/s; acting {acting:,.0f}; "
            f"acting + writing {writing:,.0f}",
            flush=True,
        )
    steps = 3000 if args.quick else 10000
    e2e = {n: end_to_end(n, steps) for n in (1, 2)}
    print(
        f"ovmse run on lite 3m (QMIX, batch 32): 1 actor {e2e[1]:,.0f} env-steps/s, "
        f"2 actors {e2e[2]:,.0f} env-steps/s",
        flush=True,
    )
    md = "\n".join(
        [
            "# Actor speed",
            "",
            f"`python benchmarks/bench_actor.py{' --quick' if args.quick else ''}` — {machine()['cpu']}, "
            f"{machine()['cores']} cores, {machine()['date']}, load average {machine()['load_average_1m']} "
            "when written (other work on the machine slows the end-to-end rows).",
            "",
            f"## Acting and writing against the raw world ({MAP}, one process)",
            "",
            "| battles per actor | raw world | + agent network, decentralized SE "
            "| + episodes written to Reverb | overhead |",
            "|---|---|---|---|---|",
            *[
                f"| {r['battles']} | {r['raw']:,.0f} | {r['acting']:,.0f} ({r['acting'] / r['raw']:.0%}) | "
                f"{r['acting_writing']:,.0f} ({r['acting_writing'] / r['raw']:.0%}) | {r['overhead']:.0%} |"
                for r in acting_rows
            ],
            "",
            "Env-steps/s. Target: acting and writing cost at most 20% of the raw world's speed. Acting runs "
            "the agent network's one-step forward in numpy (`actors/numpy_agent.py`) and records steps "
            "with vectorised writes (`EpisodeBuilder`); the rest is exploration and Reverb's writer "
            "(about 1 ms per episode).",
            "",
            "## End to end: `ovmse run` (replay, learner, actors, evaluator as processes)",
            "",
            "| actors | env-steps/s (online phase) |",
            "|---|---|",
            f"| 1 | {e2e[1]:,.0f} |",
            f"| 2 | {e2e[2]:,.0f} |",
            "",
            "Lite 3m, QMIX from scratch, batch 32, batch_size_run 2, 4 battles per actor. The replay "
            "server's samples-per-insert limiter holds actors to one learner update per 2 episodes (the "
            "synchronous algorithm's ratio), so on a 2-core machine the CPU learner, not the actors, sets "
            "the pace; more actors only help once the learner has its own cores or a GPU.",
            "",
        ]
    )
    write("actor", {"map": MAP, "acting": acting_rows, "end_to_end": e2e}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
