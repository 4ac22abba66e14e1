"""The replay server: FIFO eviction, the rate limiter in both directions, checkpoints and restore,
and a dataset that is loaded whole or not at all, exactly once."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.config import resolve_config
from deploy.recipes import CollectRequest, collect_dataset
from replay.dataset import DatasetError, read_episodes
from replay.dataset_writer import write_dataset
from replay.sampler import MixedSampler
from replay.server import (
    OfflineDataError,
    ReplayServer,
    TableSpec,
    load_offline,
    start_replay_server,
    table_specs,
)
from replay.tables import OFFLINE_TABLE, ONLINE_TABLE
from replay.writer import EpisodeWriter

REPO = Path(__file__).resolve().parents[1]
DATASET_EPISODES = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small 3m dataset from the scripted policy (a fraction of a second)."""
    path = tmp_path_factory.mktemp("data") / "3m_test.h5"
    cfg = resolve_config(map_name="3m")
    collect_dataset(cfg, CollectRequest(out=str(path), episodes=DATASET_EPISODES, num_envs=4), progress=False)
    return path


@pytest.fixture(scope="module")
def online_episodes(dataset) -> list:
    """3m episodes to play the actors' part (policy versions 100, 101, ...)."""
    episodes = read_episodes(dataset)
    for i, episode in enumerate(episodes):
        episode.meta.source = "online"
        episode.meta.policy_version = 100 + i
        episode.meta.actor_id = i % 2
    return episodes


def config(dataset=None, checkpoint_dir=None, *overrides):
    sets = ["replay.port=0", "learner.batch_size=4", "learner.batch_size_run=2", "replay.mixing_ratio=0.0"]
    sets += [f"run.dataset={dataset}"] if dataset else ["run.dataset=null", "learner.offline_updates=0"]
    if checkpoint_dir:
        sets.append(f"replay.checkpoint_dir={checkpoint_dir}")
    return resolve_config(map_name="3m", overrides=[*sets, *overrides])


def test_the_online_table_evicts_the_oldest_episodes_at_capacity(online_episodes):
    with ReplayServer((TableSpec(OFFLINE_TABLE, 1, 1), TableSpec(ONLINE_TABLE, 3, 1))) as server:
        with EpisodeWriter(server.address) as writer:
            writer.write_all(online_episodes[:5])
        assert server.stats()[ONLINE_TABLE].size == 3
        with MixedSampler(server.address, 40, 0.0, prefetch_batches=0) as sampler:
            versions = set(sampler.sample().policy_version.tolist())
        assert versions <= {102, 103, 104}, "the two oldest episodes are gone"


def test_a_written_episode_is_in_the_table_when_write_returns(online_episodes):
    with ReplayServer((TableSpec(OFFLINE_TABLE, 1, 1), TableSpec(ONLINE_TABLE, 10, 1))) as server:
        with EpisodeWriter(server.address) as writer:
            for count, episode in enumerate(online_episodes[:3], start=1):
                writer.write(episode)
                assert server.stats()[ONLINE_TABLE].size == count


def rate_limited_server():
    # batch 4, batch_size_run 2, m = 0: 2 samples per insert, min size 4, error buffer 8.
    _, online = table_specs(config(), 0)
    assert (online.samples_per_insert, online.min_size_to_sample, online.error_buffer) == (2.0, 4, 8.0)
    return ReplayServer((TableSpec(OFFLINE_TABLE, 1, 1), online))


def run_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_the_rate_limiter_holds_an_over_eager_learner_until_actors_insert(online_episodes):
    with rate_limited_server() as server, EpisodeWriter(server.address) as writer:
        writer.write_all(online_episodes[:4])  # min size 4: inserts x 2 = 8 samples granted
        batches: queue.Queue = queue.Queue()
        with MixedSampler(server.address, 4, 0.0, prefetch_batches=0, poll_interval_s=0.01) as sampler:
            learner = run_in_thread(lambda: [batches.put(sampler.sample()) for _ in range(3)])
            batches.get(timeout=30), batches.get(timeout=30)
            learner.join(0.3)
            assert learner.is_alive() and batches.empty(), "the third batch must wait for inserts"
            writer.write(online_episodes[4])  # 2 more samples granted: not yet a batch of 4
            learner.join(0.3)
            assert learner.is_alive() and batches.empty()
            writer.write(online_episodes[5])
            assert batches.get(timeout=30).batch_size == 4
            learner.join(30)
            assert not learner.is_alive()


def test_the_rate_limiter_holds_actors_that_run_ahead_until_the_learner_samples(online_episodes):
    with rate_limited_server() as server:
        writer = EpisodeWriter(server.address)
        # Up to (min size 4 x 2 + error buffer 8) / 2 = 8 episodes go in without any sample.
        writer.write_all(online_episodes[:8])
        actor = run_in_thread(lambda: writer.write(online_episodes[8]))
        actor.join(0.3)
        assert actor.is_alive(), "the ninth insert waits for the learner"
        assert server.stats()[ONLINE_TABLE].size == 8
        with MixedSampler(server.address, 2, 0.0, prefetch_batches=0) as sampler:
            sampler.sample()
        actor.join(30)
        assert not actor.is_alive() and server.stats()[ONLINE_TABLE].size == 9
        writer.close()


def same_episode(a, b) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in a.arrays())


def test_a_restarted_server_restores_both_tables_and_does_not_load_the_dataset_twice(
    dataset, online_episodes, tmp_path
):
    cfg = config(dataset, tmp_path / "ckpt", "replay.min_size_to_sample=1")
    server = start_replay_server(cfg)
    assert server.loaded_offline and server.stats()[OFFLINE_TABLE].size == DATASET_EPISODES
    with EpisodeWriter(server.address) as writer:
        writer.write_all(online_episodes[:3])
    server.stop(checkpoint=True)

    server = start_replay_server(cfg)
    try:
        stats = server.stats()
        assert server.restored and not server.loaded_offline
        assert stats[OFFLINE_TABLE].size == DATASET_EPISODES
        assert stats[OFFLINE_TABLE].inserts == DATASET_EPISODES, "the dataset went in once"
        assert stats[ONLINE_TABLE].size == 3
        offline_data = read_episodes(dataset)
        by_version = {e.meta.policy_version: e for e in online_episodes[:3]}
        with MixedSampler(server.address, 6, 0.5, prefetch_batches=0) as sampler:
            episodes = sampler.sample_episodes()
        for episode in episodes[:3]:
            assert any(same_episode(episode, original) for original in offline_data)
        for episode in episodes[3:]:
            assert same_episode(episode, by_version[episode.meta.policy_version])
    finally:
        server.stop()


def test_an_explicit_dataset_and_port_override_the_configured_ones(dataset):
    server = start_replay_server(config(dataset), dataset=None, port=0)
    try:
        assert server.stats()[OFFLINE_TABLE].size == 0 and server.port > 0
    finally:
        server.stop()


def test_a_checkpoint_made_with_another_dataset_is_refused(dataset, tmp_path):
    start_replay_server(config(dataset, tmp_path / "ckpt")).stop(checkpoint=True)
    other = write_dataset(tmp_path / "other.h5", read_episodes(dataset)[:4], episode_limit=60)
    with pytest.raises(OfflineDataError, match="other.h5"):
        start_replay_server(config(other, tmp_path / "ckpt"))


def test_an_invalid_file_never_leaves_a_half_loaded_offline_table(dataset, tmp_path):
    episodes = read_episodes(dataset)
    bad = episodes[6]
    bad.avail_actions[0, 0, bad.actions[0, 0, 0]] = 0  # episode 6 took an unavailable action
    path = write_dataset(tmp_path / "bad.h5", episodes, episode_limit=60)
    specs = table_specs(config(), offline_episodes=len(episodes))
    with ReplayServer(specs) as server:
        client = server.client()
        with pytest.raises(DatasetError) as caught:
            load_offline(client, path, chunk=4)  # episodes 0..3 are in before the bad chunk
        assert caught.value.field == "actions" and caught.value.episode == 6
        assert server.stats()[OFFLINE_TABLE].size == 0


SERVE = (
    "import sys; from deploy.cli import build_parser; from deploy.replay_commands import replay_server; "
    "sys.exit(replay_server(build_parser().parse_args(sys.argv[1:])))"
)


def test_sigterm_checkpoints_and_a_restart_finds_both_tables(dataset, online_episodes, tmp_path):
    checkpoints = tmp_path / "ckpt"
    argv = ["replay-server", "--map", "3m"]
    for override in (
        f"run.dataset={dataset}",
        f"replay.checkpoint_dir={checkpoints}",
        "replay.port=0",
        "learner.batch_size=4",
        "replay.checkpoint_interval_s=3600",
    ):
        argv += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        lines: queue.Queue = queue.Queue()
        run_in_thread(lambda: [lines.put(line) for line in proc.stdout])
        banner = lines.get(timeout=120)
        assert banner.startswith("replay server on 127.0.0.1:"), (
            banner + (tmp_path / "stderr.txt").read_text()
        )
        address = banner.split()[3].rstrip(":")
        with EpisodeWriter(address) as writer:
            writer.write_all(online_episodes[:2])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
        assert "checkpoint written" in lines.get(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    server = start_replay_server(config(dataset, checkpoints))
    try:
        stats = server.stats()
        assert not server.loaded_offline
        assert stats[OFFLINE_TABLE].size == DATASET_EPISODES and stats[ONLINE_TABLE].size == 2
    finally:
        server.stop()
