"""The particle world's offline datasets: transition files that carry their card and are checked
whole before use, and the maker that trains MATD3 and draws expert, medium, medium-replay and random
data from it, resumably."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from deploy.studies.particle_datasets import (
    ParticleDatasetConfig,
    make_datasets,
    normalised_score,
    pick_medium,
)
from replay.transition_dataset import read_transition_dataset, write_transition_dataset

CARD = {"map": "simple_spread", "kind": "expert", "action_low": 0.0, "action_high": 1.0}


def arrays(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(n, 3, 18)).astype(np.float32),
        "state": rng.normal(size=(n, 54)).astype(np.float32),
        "actions": rng.uniform(0, 1, (n, 3, 5)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, 3, 18)).astype(np.float32),
        "next_state": rng.normal(size=(n, 54)).astype(np.float32),
        "terminal": np.zeros(n, bool),
    }


def test_a_dataset_reads_back_as_written_with_its_card(tmp_path):
    data = arrays()
    write_transition_dataset(tmp_path / "d.h5", data, CARD)
    back, card = read_transition_dataset(tmp_path / "d.h5", map_name="simple_spread")
    for name, value in data.items():
        np.testing.assert_array_equal(back[name], value)
    assert card["transitions"] == 10 and card["n_agents"] == 3 and card["kind"] == "expert"


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda d: d["actions"].__setitem__((4, 1, 2), 1.5),
            "actions: transition 4 is outside the action box",
        ),
        (lambda d: d["reward"].__setitem__(7, np.nan), "reward: NaN or infinite value at transition 7"),
        (lambda d: d.__setitem__("next_state", d["next_state"][:, :50]), r"next_state: shape \[10, 50\]"),
    ],
)
def test_bad_data_is_refused_by_name_and_no_file_is_left(tmp_path, break_it, message):
    data = arrays()
    break_it(data)
    with pytest.raises(InputError, match=message):
        write_transition_dataset(tmp_path / "d.h5", data, CARD)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_of_another_map_is_refused(tmp_path):
    write_transition_dataset(tmp_path / "d.h5", arrays(), CARD)
    with pytest.raises(InputError, match="the dataset is for 'simple_spread', this run is on 'simple_tag'"):
        read_transition_dataset(tmp_path / "d.h5", map_name="simple_tag")


def test_the_normalised_score_is_0_at_random_and_100_at_expert_and_medium_is_nearest_50():
    assert normalised_score(-100.0, -100.0, -40.0) == 0.0
    assert normalised_score(-40.0, -100.0, -40.0) == 100.0
    # returns of snapshots 0..3, expert at 3: scores 10, 45, 80
    assert pick_medium([-94.0, -73.0, -52.0, -40.0], 3, -100.0, -40.0) == 1
    assert pick_medium([-40.0, -90.0, -65.0], 0, -100.0, -40.0) == 2  # a later one when the first is best
    with pytest.raises(ValueError, match="one snapshot"):
        pick_medium([-40.0], 0, -100.0, -40.0)


def test_the_maker_writes_four_datasets_from_one_matd3_run_and_resumes_without_retraining(tmp_path):
    cfg = ParticleDatasetConfig(
        env_steps=3_000,
        transitions=300,
        eval_interval=500,
        score_episodes=16,
        num_envs=16,
        warmup=200,
        batch_size=64,
    )
    summary = make_datasets(tmp_path, cfg, progress=lambda _: None)
    cards = {}
    for kind in ("expert", "medium", "medium_replay", "random"):
        data, cards[kind] = read_transition_dataset(tmp_path / f"simple_spread_{kind}.h5", "simple_spread")
        assert cards[kind]["kind"] == kind
        assert cards[kind]["random_return"] == summary["random_return"]
        assert cards[kind]["expert_return"] == summary["expert_return"]
    assert cards["expert"]["transitions"] == 300
    medium_steps = summary["snapshot_env_steps"][summary["medium_snapshot"]]
    assert cards["medium_replay"]["transitions"] == medium_steps
    assert summary["medium_snapshot"] != summary["expert_snapshot"]
    (tmp_path / "simple_spread_random.h5").unlink()
    before = (tmp_path / "simple_spread_expert.h5").stat().st_mtime_ns
    again = make_datasets(tmp_path, cfg, progress=lambda _: None)
    assert again["snapshot_returns"] == summary["snapshot_returns"]  # no second training
    assert (tmp_path / "simple_spread_random.h5").exists()
    assert (tmp_path / "simple_spread_expert.h5").stat().st_mtime_ns == before
