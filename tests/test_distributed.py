"""The distributed system on one machine (`ovmse run`): replay server, learner, two actors and the
evaluator as separate processes learn lite 3m, at the synchronous algorithm's update ratio, mixing a
quarter of every batch from an offline dataset."""

from __future__ import annotations

import json

import pytest

from common.config import resolve_config
from common.run_log import RunLog
from deploy.embedded import EmbeddedRun, run_embedded
from deploy.recipes import CollectRequest, collect_dataset


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    dataset = tmp / "3m_heuristic.h5"
    cfg = resolve_config(
        map_name="3m",
        method="qmix",
        overrides=[
            f"run.run_dir={tmp}",
            "run.name=qmix_3m",
            "actor.num_actors=2",
            "actor.envs_per_actor=4",
            f"run.dataset={dataset}",
            "replay.mixing_ratio=0.25",
            "run.online_env_steps=8000",
            "run.eval_interval_steps=2000",
            "actor.epsilon_anneal_steps=5000",
            "learner.batch_size=32",
            "actor.test_episodes=32",
            "actor.final_test_episodes=64",
            "run.log_interval_s=1000",
        ],
    )
    # 256 episodes: 8x a batch's offline share, so no batch holds an offline episode twice.
    collect_dataset(
        cfg,
        CollectRequest(out=str(dataset), episodes=256, policy="heuristic", epsilon=0.2, num_envs=32),
        progress=False,
    )
    assert run_embedded(cfg) == 0
    return cfg, tmp / "qmix_3m"


def test_two_actors_improve_the_test_win_rate_within_the_budget(finished_run):
    _, run_dir = finished_run
    run = EmbeddedRun(resolve_config(), run_dir)
    evals = run.evals()
    assert evals[0]["env_steps"] == 0 and len(evals) >= 3
    best_later = max(e["win_rate"] for e in evals[1:] + run.evals("final_eval"))
    assert best_later >= evals[0]["win_rate"] + 0.3
    assert (run_dir / "test_win_rate.png").exists() and (run_dir / "checkpoints" / "learner.pt").exists()


def test_distributed_updates_per_episode_match_the_synchronous_rule(finished_run):
    cfg, run_dir = finished_run
    progress = json.loads((run_dir / "learner_progress.json").read_text())
    assert progress["done"] and set(progress["actors"]) == {0, 1}
    # Synchronous rule: one update per batch_size_run episodes once the online table can be sampled.
    min_size, per_update = cfg.learner.batch_size, cfg.learner.batch_size_run
    expected = (progress["episodes"] - min_size) / per_update
    assert abs(progress["updates"] - expected) <= 0.15 * expected + 4


def test_every_distributed_batch_holds_round_m_b_offline_episodes(finished_run):
    _, run_dir = finished_run
    train = RunLog(run_dir).read("train")
    assert len(train) >= 3
    assert {row["offline_episodes"] for row in train} == {8}  # round(0.25 * 32) of every 32


def test_every_process_logged_and_every_episode_carried_a_policy_version(finished_run):
    _, run_dir = finished_run
    for name in ("replay", "learner", "evaluator", "actor0", "actor1"):
        assert (run_dir / "logs" / f"{name}.log").exists()
    versions = [r["policy_version"] for r in EmbeddedRun(resolve_config(), run_dir).evals()]
    assert versions == sorted(versions) and versions[0] >= 1
