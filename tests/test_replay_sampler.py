"""The learner's sampler: exact offline/online counts, padding with a mask, prefetch and shutdown.

One in-process Reverb server for the module; each test empties the tables it uses.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from common.episode import Episode, EpisodeMeta
from replay.sampler import MixedSampler, SamplerClosed
from replay.server import ReplayServer, TableSpec
from replay.tables import OFFLINE_TABLE, ONLINE_TABLE
from replay.writer import EpisodeWriter

OFFLINE_EPISODES, ONLINE_EPISODES = 12, 12


def episode(length: int, version: int, source: str) -> Episode:
    n, actions = 2, 3
    rows = length + 1
    reward = np.zeros((rows, 1), dtype=np.float32)
    reward[:length] = 1.0
    return Episode(
        state=np.full((rows, 4), version, dtype=np.float32),
        obs=np.full((rows, n, 6), version, dtype=np.float32),
        actions=np.zeros((rows, n, 1), dtype=np.int64),
        avail_actions=np.ones((rows, n, actions), dtype=np.int32),
        reward=reward,
        terminated=np.zeros((rows, 1), dtype=np.uint8),
        filled=np.ones((rows, 1), dtype=np.uint8),
        meta=EpisodeMeta(episode_return=float(length), policy_version=version, source=source),
    )


@pytest.fixture(scope="module")
def server():
    # Plain MinSize tables: these tests are about counts, not about rate limiting.
    specs = (TableSpec(OFFLINE_TABLE, 1000, 1), TableSpec(ONLINE_TABLE, 1000, 1))
    with ReplayServer(specs) as srv:
        client = srv.client()
        with EpisodeWriter(client, OFFLINE_TABLE) as offline, EpisodeWriter(client, ONLINE_TABLE) as online:
            # Offline episodes carry policy version -1, online ones 100 + i: the source is visible in
            # the data itself, not only in the flag the sampler sets.
            for i in range(OFFLINE_EPISODES):
                offline.write(episode(3 + i % 4, -1, "offline"))
            for i in range(ONLINE_EPISODES):
                online.write(episode(2 + i % 7, 100 + i, "online"))
        yield srv


@pytest.mark.parametrize(
    ("mixing_ratio", "batch_size", "offline"),
    [(0.0, 8, 0), (0.1, 10, 1), (0.1, 128, 13), (0.25, 8, 2), (0.5, 7, 4), (0.3, 5, 2), (1.0, 6, 6)],
)
def test_every_batch_holds_exactly_round_m_b_offline_episodes(server, mixing_ratio, batch_size, offline):
    with MixedSampler(server.address, batch_size, mixing_ratio, prefetch_batches=0) as sampler:
        for _ in range(3):
            batch = sampler.sample()
            assert batch.batch_size == batch_size
            assert int(batch.offline.sum()) == offline
            from_offline_data = batch.policy_version == -1
            assert bool((from_offline_data == batch.offline).all()), (
                "the flag matches where the data came from"
            )


def samples_drawn(server, table: str) -> int:
    return server.stats()[table].samples


def test_a_zero_mixing_ratio_never_reads_the_offline_table(server):
    before = samples_drawn(server, OFFLINE_TABLE)
    with MixedSampler(server.address, 16, 0.0, prefetch_batches=2) as sampler:
        for _ in range(5):
            assert not sampler.sample(timeout=30).offline.any()
    assert samples_drawn(server, OFFLINE_TABLE) == before


def test_an_all_offline_mixing_ratio_never_reads_the_online_table(server):
    before = samples_drawn(server, ONLINE_TABLE)
    with MixedSampler(server.address, 16, 1.0, prefetch_batches=0) as sampler:
        for _ in range(3):
            assert sampler.sample().offline.all()
    assert samples_drawn(server, ONLINE_TABLE) == before


def test_batches_are_padded_to_their_longest_episode_with_a_filled_mask(server):
    with MixedSampler(server.address, 32, 0.25, prefetch_batches=0) as sampler:
        batch = sampler.sample()
    lengths = batch.filled.sum(dim=(1, 2)).long() - 1
    assert batch.max_seq_length == int(lengths.max()) + 1
    for i, length in enumerate(lengths.tolist()):
        assert batch.filled[i, : length + 1].all() and not batch.filled[i, length + 1 :].any()
        assert not batch.obs[i, length + 1 :].any(), "padding rows are zero"
        # Each synthetic episode's observations hold its policy version: rows were not mixed up.
        assert (batch.obs[i, : length + 1] == float(batch.policy_version[i])).all()
    assert batch.obs.dtype.is_floating_point and batch.avail_actions.dtype.is_floating_point is False


def test_the_prefetcher_keeps_batches_ready_and_counts_what_it_drew(server):
    with MixedSampler(server.address, 8, 0.25, prefetch_batches=2) as sampler:
        batches = [sampler.sample(timeout=30) for _ in range(4)]
        assert sampler.prefetching
    assert all(b.batch_size == 8 for b in batches)
    assert sampler.stats.batches >= 4
    assert sampler.stats.offline_episodes == 2 * sampler.stats.batches
    assert sampler.stats.online_episodes == 6 * sampler.stats.batches


def test_closing_stops_a_prefetcher_that_waits_for_data():
    # The online table is empty: the prefetch thread waits for its first episode.
    specs = (TableSpec(OFFLINE_TABLE, 10, 1), TableSpec(ONLINE_TABLE, 10, 1))
    with ReplayServer(specs) as srv:
        sampler = MixedSampler(srv.address, 4, 0.0, prefetch_batches=2, poll_interval_s=0.01)
        with pytest.raises(TimeoutError):
            sampler.sample(timeout=0.2)
        sampler.close()
        assert not sampler.prefetching
        with pytest.raises(SamplerClosed):
            sampler.sample(timeout=1)


def test_closing_releases_a_learner_waiting_without_prefetch():
    specs = (TableSpec(OFFLINE_TABLE, 10, 1), TableSpec(ONLINE_TABLE, 10, 1))
    with ReplayServer(specs) as srv:
        sampler = MixedSampler(srv.address, 4, 0.0, prefetch_batches=0, poll_interval_s=0.01)
        outcome: list[BaseException] = []

        def learner():
            try:
                sampler.sample()
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=learner)
        thread.start()
        thread.join(0.2)
        assert thread.is_alive(), "nothing to sample yet"
        sampler.close()
        thread.join(10)
        assert not thread.is_alive() and isinstance(outcome[0], SamplerClosed)


def test_a_batch_never_holds_one_episode_twice_once_the_table_is_large_enough():
    # 40 online episodes, 5 per batch (the table holds 8x the batch): uniform draws with replacement
    # would repeat an episode in a batch with probability 0.23, in some batch of 40 almost surely.
    specs = (TableSpec(OFFLINE_TABLE, 10, 1), TableSpec(ONLINE_TABLE, 100, 1))
    with ReplayServer(specs) as srv, EpisodeWriter(srv.address) as writer:
        writer.write_all(episode(3, 100 + i, "online") for i in range(40))
        with MixedSampler(srv.address, 5, 0.0, prefetch_batches=0) as sampler:
            for _ in range(40):
                versions = sampler.sample().policy_version.tolist()
                assert len(set(versions)) == 5, versions
            assert sampler.stats.repeats_redrawn > 0


def test_a_small_table_still_gives_whole_batches(server):
    with MixedSampler(server.address, ONLINE_EPISODES + 4, 0.0, prefetch_batches=0) as sampler:
        batch = sampler.sample(timeout=30)
    assert batch.batch_size == ONLINE_EPISODES + 4


def test_the_builders_sampler_mixes_at_the_configured_ratio(server):
    from common.config import resolve_config
    from deploy.builder import Builder

    cfg = resolve_config(
        map_name="3m",
        method="qmix",
        overrides=["replay.mixing_ratio=0.25", "learner.batch_size=8", "run.dataset=unused.h5"],
    )
    # expected=None: this module's episodes are not 3m-shaped, and the map's shape check would drop
    # them all (tests/test_online_data_guard.py covers that check).
    with Builder(cfg).sampler(server.address, prefetch_batches=0, expected=None) as sampler:
        for _ in range(3):
            batch = sampler.sample(timeout=30)
            assert batch.batch_size == 8 and int(batch.offline.sum()) == 2  # round(0.25 * 8)
            assert bool(((batch.policy_version == -1) == batch.offline).all())


def test_each_batch_names_its_episodes_table_and_key(server):
    with MixedSampler(server.address, 8, 0.5, prefetch_batches=1) as sampler:
        batch = sampler.sample(timeout=30)
    assert [table for table, _ in batch.items] == [OFFLINE_TABLE] * 4 + [ONLINE_TABLE] * 4
    assert all(isinstance(key, int) for _, key in batch.items)
