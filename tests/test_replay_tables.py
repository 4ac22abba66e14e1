"""The replay tables follow the configuration, and an episode survives the trip through an item.

Pure functions only: no Reverb server here.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from common.config import Config, rate_limit
from common.episode import Episode, EpisodeMeta
from replay.sampler import UNLIMITED, samples_allowed
from replay.server import table_specs
from replay.tables import ITEM_COLUMNS, decode_item, encode_episode


def synthetic_episode(
    length: int, episode_return: float = 1.0, version: int = 0, source: str = "online"
) -> Episode:
    rng = np.random.default_rng(length * 1000 + version)
    n, actions = 2, 4
    avail = np.ones((length + 1, n, actions), dtype=np.int32)
    taken = np.zeros((length + 1, n, 1), dtype=np.int64)
    taken[:length, :, 0] = rng.integers(0, actions, size=(length, n))
    reward = np.zeros((length + 1, 1), dtype=np.float32)
    reward[length - 1] = episode_return
    terminated = np.zeros((length + 1, 1), dtype=np.uint8)
    terminated[length - 1] = 1
    return Episode(
        state=rng.normal(size=(length + 1, 3)).astype(np.float32),
        obs=rng.normal(size=(length + 1, n, 5)).astype(np.float32),
        actions=taken,
        avail_actions=avail,
        reward=reward,
        terminated=terminated,
        filled=np.ones((length + 1, 1), dtype=np.uint8),
        meta=EpisodeMeta(episode_return=episode_return, policy_version=version, actor_id=3, source=source),
    )


def with_replay(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, **changes))


def test_online_table_uses_the_configured_capacity_and_derived_rate_limit():
    cfg = Config()
    offline, online = table_specs(cfg, offline_episodes=5000)
    limit = rate_limit(cfg)
    assert online.capacity == 5000
    # 3s5z preset: B = 128, m = 0.1 -> 115 online episodes per update, batch_size_run = 2.
    assert online.samples_per_insert == limit.samples_per_insert == 115 / 2
    assert online.min_size_to_sample == 128
    assert online.error_buffer == limit.error_buffer == 230.0


def test_offline_table_holds_the_whole_dataset_and_is_not_sampled_before_it_is_all_in():
    offline, _ = table_specs(Config(), offline_episodes=1908)
    assert offline.capacity == 1908 and offline.min_size_to_sample == 1908
    assert offline.samples_per_insert is None  # MinSize: loading never blocks


def test_an_all_offline_mixing_ratio_leaves_the_online_table_without_a_rate_limiter():
    _, online = table_specs(with_replay(Config(), mixing_ratio=1.0), offline_episodes=10)
    assert online.samples_per_insert is None


def test_a_minimum_size_above_the_capacity_is_refused():
    with pytest.raises(ValueError, match="online_capacity"):
        table_specs(with_replay(Config(), online_capacity=64, min_size_to_sample=65), 0)


def test_an_episode_round_trips_through_item_columns():
    episode = synthetic_episode(7, episode_return=4.5, version=12)
    episode.meta.battle_won = True
    columns = encode_episode(episode)
    assert len(columns) == len(ITEM_COLUMNS)
    # Reverb hands each column back with a leading sequence axis of 1.
    back = decode_item([c[None] for c in columns])
    for name, array in episode.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), array)
        assert getattr(back, name).dtype == array.dtype
    assert back.meta == episode.meta


def test_the_sampling_table_decides_the_source():
    episode = synthetic_episode(3, source="online")
    assert decode_item(encode_episode(episode), source="offline").meta.source == "offline"


def info(size, min_size, spi, inserts, samples, min_diff):
    limiter = SimpleNamespace(
        min_size_to_sample=min_size,
        samples_per_insert=spi,
        insert_stats=SimpleNamespace(completed=inserts),
        sample_stats=SimpleNamespace(completed=samples),
        min_diff=min_diff,
    )
    return SimpleNamespace(current_size=size, rate_limiter_info=limiter)


def test_no_samples_are_allowed_below_the_minimum_size():
    assert samples_allowed(info(3, 4, 1.0, 3, 0, -1.7976931348623157e308)) == 0


def test_a_min_size_limiter_allows_unlimited_samples():
    assert samples_allowed(info(4, 4, 1.0, 4, 0, -1.7976931348623157e308)) == UNLIMITED


def test_a_ratio_limiter_allows_samples_down_to_its_lower_bound():
    # spi 2, min size 4, error buffer 3: bound = 2 * 4 - 3 = 5; error = 6 * 2 - 4 = 8 -> 3 more.
    assert samples_allowed(info(6, 4, 2.0, 6, 4, 5.0)) == 3
    assert samples_allowed(info(6, 4, 2.0, 6, 7, 5.0)) == 0
