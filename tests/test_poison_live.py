"""Poison never stops a run: a live `ovmse run` on 3m whose online table an attacker fills, with a
raw Reverb client and no credentials, with episodes no battle can produce (a reward of 3e38 or 1e15
each step, observations of 3e38, `filled` 7 with `terminated` 200, `avail_actions` 5, `terminated`
on every step) still finishes its budget with exit code 0 and a final win rate. Every such item the
learner draws is dropped, deleted from the table and counted: in the run log's "dropped" records,
the learner's progress file and its log. Real processes, a real Reverb server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from common.episode import Episode, EpisodeMeta
from replay.dataset import map_layout
from replay.tables import ONLINE_TABLE, encode_episode, import_reverb

REPO = Path(__file__).resolve().parents[1]
LAYOUT = map_layout("3m")
BUDGET = 1500
TINY_RUN = [
    "--map",
    "3m",
    "--method",
    "qmix",
    "--set",
    "actor.num_actors=1",
    "--set",
    "actor.envs_per_actor=4",
    "--set",
    "learner.batch_size=8",
    "--set",
    "learner.rnn_hidden_dim=16",
    "--set",
    "actor.test_episodes=4",
    "--set",
    "actor.final_test_episodes=4",
    "--set",
    "run.eval_interval_steps=100000",
    "--set",
    "run.log_interval_s=1",
    "--set",
    f"run.online_env_steps={BUDGET}",
]


def poison(kind: int, actor: int) -> Episode:
    """One of the six kinds of extreme but finite episodes, 4 steps long, every agent alive."""
    n, rows = LAYOUT.n_agents, 5
    avail = np.ones((rows, n, LAYOUT.n_actions), dtype=np.int32)
    avail[..., 0] = 0
    actions = np.ones((rows, n, 1), dtype=np.int64)
    actions[-1] = 0
    e = Episode(
        state=np.zeros((rows, LAYOUT.state_size), dtype=np.float32),
        obs=np.zeros((rows, n, LAYOUT.obs_size), dtype=np.float32),
        actions=actions,
        avail_actions=avail,
        reward=np.zeros((rows, 1), dtype=np.float32),
        terminated=np.zeros((rows, 1), dtype=np.uint8),
        filled=np.ones((rows, 1), dtype=np.uint8),
        meta=EpisodeMeta(policy_version=10**6, actor_id=actor),
    )
    if kind == 0:
        e.reward[:-1] = 3e38
    elif kind == 1:
        e.reward[:-1] = 1e15
    elif kind == 2:
        e.obs[:] = 3e38
    elif kind == 3:
        e.filled[:], e.terminated[:] = 7, 200
    elif kind == 4:
        e.avail_actions[:] = 5
    else:
        e.terminated[:] = 1
    e.meta.episode_return = float(e.reward.sum(dtype=np.float64))
    return e


def attack(address: str, per_kind: int) -> int:
    """Insert `per_kind` items of each kind into the online table, retrying until the server is up."""
    client = import_reverb().Client(address)
    deadline = time.monotonic() + 240
    inserted = 0
    for _ in range(per_kind):
        for kind in range(6):
            while True:
                try:
                    client.insert(encode_episode(poison(kind, 660 + kind)), priorities={ONLINE_TABLE: 1.0})
                    inserted += 1
                    break
                except Exception:  # the replay server is still starting
                    assert time.monotonic() < deadline, "the replay server never came up"
                    time.sleep(0.2)
    return inserted


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def test_a_run_whose_online_table_is_poisoned_finishes_and_counts_the_drops(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "run", *TINY_RUN, "--set", f"run.run_dir={tmp_path}"]
        + ["--set", "run.name=poisoned"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_dir = tmp_path / "poisoned"
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "config.yaml").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run never wrote its config"
            time.sleep(0.2)
        replay = yaml.safe_load((run_dir / "config.yaml").read_text())["replay"]
        inserted = attack(f"{replay['address']}:{replay['port']}", per_kind=10)
        out, _ = run.communicate(timeout=540)
    finally:
        run.kill()
    assert run.returncode == 0, out[-3000:]
    assert inserted == 60
    final = records(run_dir, "final_eval")
    assert len(final) == 1 and 0.0 <= final[0]["win_rate"] <= 1.0
    assert "test win rate at the end" in out
    dropped = records(run_dir, "dropped")
    assert dropped, "no drops recorded"
    last = dropped[-1]
    assert last["out_of_range"] >= 1 and last["invalid"] >= 1
    assert last["total"] == sum(last[r] for r in ("decode", "shape", "nonfinite", "invalid", "out_of_range"))
    progress = json.loads((run_dir / "learner_progress.json").read_text())
    assert progress["done"] and progress["env_steps"] >= BUDGET
    assert sum(progress["dropped"].values()) == last["total"]
    learner_log = (run_dir / "logs" / "learner.log").read_text()
    assert "dropped an item of the online table from actor 66" in learner_log
    assert "updates in a row had a non-finite loss" not in learner_log
