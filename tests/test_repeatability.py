"""A seed repeats a run: `ovmse pretrain` and `ovmse train --mode sync` on CPU write the same metrics
for the same `run.seed` (network init, battles, exploration, batch order), and different ones for
another seed. The one-process trainer's replay draws each batch without replacement."""

from __future__ import annotations

import json

import pytest

from common.config import resolve_config
from common.episode import Episode, EpisodeMeta
from deploy.recipes import CollectRequest, collect_dataset
from deploy.single_process import pretrain, train_sync
from replay.local import LocalReplay


def metrics(run_dir) -> list[dict]:
    """Every record of a run, timestamps aside."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time", None)
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("repeat") / "3m.h5"
    cfg = resolve_config(map_name="3m", method="ovmse", overrides=[f"run.dataset={path}"])
    collect_dataset(cfg, CollectRequest(out=str(path), episodes=48, policy="heuristic", epsilon=0.3), False)
    return path


def small(dataset, tmp_path, seed: int, method: str = "ovmse"):
    return resolve_config(
        map_name="3m",
        method=method,
        overrides=[
            f"run.dataset={dataset}",
            f"run.run_dir={tmp_path}",
            f"run.seed={seed}",
            "learner.offline_updates=12",
            "run.offline_eval_interval=6",
            "learner.batch_size=8",
            "run.online_env_steps=400",
            "run.eval_interval_steps=200",
            "actor.test_episodes=8",
            "actor.final_test_episodes=8",
            "run.log_interval_s=1000",
        ],
    )


def test_pretrain_twice_with_one_seed_writes_identical_metrics_and_another_seed_does_not(dataset, tmp_path):
    runs = [
        pretrain(small(dataset, tmp_path, seed), run_dir=tmp_path / f"p{i}", progress=False)
        for i, seed in enumerate((0, 0, 1))
    ]
    first, again, other = (metrics(r.run_dir) for r in runs)
    assert [r["kind"] for r in first].count("offline_eval") == 2
    assert first == again
    assert first != other


def test_sync_training_twice_with_one_seed_writes_identical_metrics(dataset, tmp_path):
    runs = [
        train_sync(small(dataset, tmp_path, seed), run_dir=tmp_path / f"s{i}", progress=False)
        for i, seed in enumerate((5, 5, 6))
    ]
    first, again, other = (metrics(r.run_dir) for r in runs)
    assert any(r["kind"] == "train" for r in first) or runs[0].updates > 0
    assert first == again
    assert first != other


def episode(tag: int, source: str) -> Episode:
    import numpy as np

    rows = 3
    return Episode(
        state=np.full((rows, 2), tag, dtype=np.float32),
        obs=np.full((rows, 1, 2), tag, dtype=np.float32),
        actions=np.zeros((rows, 1, 1), dtype=np.int64),
        avail_actions=np.ones((rows, 1, 2), dtype=np.int32),
        reward=np.zeros((rows, 1), dtype=np.float32),
        terminated=np.zeros((rows, 1), dtype=np.uint8),
        filled=np.ones((rows, 1), dtype=np.uint8),
        meta=EpisodeMeta(policy_version=tag, source=source),
    )


def local_replay(seed: int, batch_size: int = 10, mixing_ratio: float = 0.3) -> LocalReplay:
    replay = LocalReplay(
        [episode(-1 - i, "offline") for i in range(5)],
        batch_size=batch_size,
        mixing_ratio=mixing_ratio,
        online_capacity=7,
        seed=seed,
    )
    replay.write_all(episode(i, "online") for i in range(10))
    return replay


def test_the_local_replay_mixes_exactly_never_repeats_an_episode_in_a_batch_and_keeps_the_newest():
    replay = local_replay(seed=0)
    for _ in range(20):
        batch = replay.sample()
        versions = batch.policy_version.tolist()
        assert batch.offline.tolist() == [True] * 3 + [False] * 7  # round(0.3 * 10) offline, first
        assert len(set(versions)) == len(versions)
        assert set(versions[3:]) == set(range(3, 10))  # the FIFO holds the last 7 of 10


def test_the_local_replay_repeats_its_batches_for_a_seed():
    a, b, c = (local_replay(seed) for seed in (4, 4, 5))
    batches = [[r.sample().policy_version.tolist() for _ in range(5)] for r in (a, b, c)]
    assert batches[0] == batches[1] != batches[2]


def test_the_local_replay_refuses_a_batch_it_cannot_fill_without_repeats():
    with pytest.raises(ValueError, match="fewer than"):
        local_replay(seed=0, batch_size=20, mixing_ratio=0.5)


def test_sync_training_with_a_mixing_ratio_draws_round_m_b_offline_episodes_per_batch(
    dataset, tmp_path, monkeypatch
):
    drawn = []
    sample = LocalReplay.sample

    def counting(self, timeout=None):
        batch = sample(self, timeout)
        drawn.append((int(batch.offline.sum()), batch.batch_size))
        return batch

    monkeypatch.setattr(LocalReplay, "sample", counting)
    cfg = resolve_config(
        map_name="3m",
        method="qmix",
        overrides=[
            f"run.dataset={dataset}",
            f"run.run_dir={tmp_path}",
            "replay.mixing_ratio=0.3",
            "learner.batch_size=10",
            "run.online_env_steps=600",
            "run.eval_interval_steps=600",
            "actor.test_episodes=4",
            "run.log_interval_s=1000",
        ],
    )
    result = train_sync(cfg, progress=False, final_test_episodes=0)
    assert result.updates >= 5 and len(drawn) == result.updates
    assert set(drawn) == {(3, 10)}  # round(0.3 * 10) offline episodes in every batch of 10


def test_the_local_replay_reads_no_offline_episode_at_ratio_zero_and_rounds_a_small_share_to_one():
    none = local_replay(seed=0, batch_size=7, mixing_ratio=0.0)
    one = local_replay(seed=0, batch_size=7, mixing_ratio=0.1)  # round(0.7) = 1
    for _ in range(5):
        assert none.sample().offline.tolist() == [False] * 7
        batch = one.sample()
        assert batch.offline.tolist() == [True] + [False] * 6 and batch.policy_version[0] < 0


def test_the_local_replay_counts_what_it_is_given_and_its_views_share_the_online_buffer():
    replay = local_replay(seed=0)  # 10 written, the FIFO keeps 7
    assert replay.episodes_written == 10 and len(replay.online) == 7
    replay.write(episode(10, "online"))
    assert replay.episodes_written == 11 and replay.online[-1].meta.policy_version == 10
    half = replay.with_mixing_ratio(0.5, seed=3)  # the same episodes, split 5 + 5
    assert half.sample().offline.tolist() == [True] * 5 + [False] * 5
    assert replay.sample().offline.tolist() == [True] * 3 + [False] * 7  # the original keeps its split
    replay.write(episode(11, "online"))
    assert half.online[-1].meta.policy_version == 11  # one online buffer for both
