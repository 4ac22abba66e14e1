"""Dataset files in CFCQL's layout: their files load, ours load in their code, bad files are named."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from deploy.recipes import behaviour_probs
from replay.dataset import (
    CFCQL_DTYPES,
    CFCQL_KEYS,
    DatasetError,
    MapLayout,
    inspect_dataset,
    map_layout,
    read_episodes,
    validate_dataset,
)
from replay.dataset_writer import write_dataset

N_AGENTS, OBS, STATE, ACTIONS, LIMIT = 2, 5, 7, 4, 6
LENGTHS = (3, 6, 2, 5)  # the second episode hits the time limit


def cfcql_arrays(lengths=LENGTHS, final_row_filled=True, seed=0) -> dict[str, np.ndarray]:
    """Arrays exactly as CFCQL's collector saves a PyMARL EpisodeBatch: [N, limit + 1, ...], torch
    dtypes (long actions and filled, int avail_actions), the action picked at the final observation
    stored too, padding rows zero."""
    rng = np.random.default_rng(seed)
    n, rows = len(lengths), LIMIT + 1
    data = {
        key: np.zeros((n, rows, *shape), dtype=CFCQL_DTYPES[key]) for key, shape in _step_shapes().items()
    }
    for i, length in enumerate(lengths):
        held = length + 1
        data["state"][i, :held] = rng.normal(size=(held, STATE))
        data["obs"][i, :held] = rng.normal(size=(held, N_AGENTS, OBS))
        avail = rng.random((held, N_AGENTS, ACTIONS)) < 0.6
        avail[..., 1] = True  # "stop" is always available to a living agent
        data["avail_actions"][i, :held] = avail
        choice = np.where(avail, rng.random(avail.shape), -1.0).argmax(-1)
        data["actions"][i, :held, :, 0] = choice  # includes the final row, as CFCQL's runner does
        data["probs"][i, :held] = avail / avail.sum(-1, keepdims=True)
        data["reward"][i, :length, 0] = rng.random(length)
        if length < LIMIT:
            data["terminated"][i, length - 1, 0] = 1
        data["filled"][i, : held if final_row_filled else length, 0] = 1
    return data


def _step_shapes():
    return {
        "state": (STATE,),
        "obs": (N_AGENTS, OBS),
        "actions": (N_AGENTS, 1),
        "avail_actions": (N_AGENTS, ACTIONS),
        "probs": (N_AGENTS, ACTIONS),
        "reward": (1,),
        "terminated": (1,),
        "filled": (1,),
    }


def write_h5(path: Path, data: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
    return path


TOY_MAP = MapLayout("toy", N_AGENTS, OBS, STATE, ACTIONS, LIMIT)


def test_a_hand_written_cfcql_file_loads_with_padding_stripped(tmp_path):
    data = cfcql_arrays()
    episodes = read_episodes(write_h5(tmp_path / "toy_medium.h5", data), TOY_MAP)
    assert [e.length for e in episodes] == list(LENGTHS)
    for i, episode in enumerate(episodes):
        L = episode.length
        np.testing.assert_array_equal(episode.obs, data["obs"][i, : L + 1])
        np.testing.assert_array_equal(episode.actions[:L], data["actions"][i, :L])
        assert not episode.actions[L].any(), "the final row holds no action in our schema"
        assert episode.filled.all() and episode.filled.dtype == np.uint8
        assert episode.meta.source == "offline"
        assert episode.meta.episode_return == pytest.approx(float(data["reward"][i].sum()))
    assert episodes[1].terminated.sum() == 0  # a time-limit end is not terminal


def test_our_file_holds_exactly_cfcqls_keys_dtypes_and_shapes(tmp_path):
    episodes = read_episodes(write_h5(tmp_path / "a.h5", cfcql_arrays()))
    path = write_dataset(tmp_path / "ours.h5", episodes, episode_limit=LIMIT)
    with h5py.File(path, "r") as f:
        # CFCQL's loader passes every key to EpisodeBatch.update, which rejects unknown ones.
        assert sorted(f.keys()) == sorted(CFCQL_KEYS)
        for key in CFCQL_KEYS:
            assert f[key].dtype == CFCQL_DTYPES[key], key
            assert f[key].shape[:2] == (len(LENGTHS), LIMIT + 1), key
        # What CFCQL's H5Dataset does: len(file['actions']), then file[key][sorted indices].
        index = np.sort(np.random.default_rng(0).choice(len(f["actions"]), 3, replace=False))
        batch = {key: f[key][index] for key in f.keys()}
        assert batch["filled"].sum(axis=(1, 2)).tolist() == [LENGTHS[i] + 1 for i in index]


def test_a_file_round_trips_through_our_writer(tmp_path):
    original = read_episodes(write_h5(tmp_path / "a.h5", cfcql_arrays()))
    again = read_episodes(write_dataset(tmp_path / "b.h5", original, episode_limit=LIMIT), TOY_MAP)
    for a, b in zip(original, again, strict=True):
        for name, array in a.arrays().items():
            np.testing.assert_array_equal(getattr(b, name), array)


def test_files_without_probs_load(tmp_path):
    data = cfcql_arrays()
    del data["probs"]
    assert len(read_episodes(write_h5(tmp_path / "noprobs.h5", data), TOY_MAP)) == len(LENGTHS)


def test_a_final_observation_row_left_unfilled_still_gives_the_right_lengths(tmp_path):
    episodes = read_episodes(
        write_h5(tmp_path / "a.h5", cfcql_arrays(lengths=(3, 2), final_row_filled=False))
    )
    assert [e.length for e in episodes] == [3, 2]
    assert all(e.terminated[e.length - 1, 0] == 1 for e in episodes)


def corrupt(tmp_path, change) -> Path:
    data = cfcql_arrays()
    change(data)
    return write_h5(tmp_path / "bad.h5", data)


def rejected(path, expected=TOY_MAP) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        validate_dataset(path, expected)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)
    return caught.value


def test_a_missing_key_is_named(tmp_path):
    error = rejected(corrupt(tmp_path, lambda d: d.pop("reward")))
    assert error.field == "reward" and "missing" in error.detail


def test_a_wrong_shape_is_named(tmp_path):
    def one_agent_obs(d):
        d["obs"] = d["obs"][:, :, :1]

    def flat_reward(d):
        d["reward"] = d["reward"][..., 0]

    assert rejected(corrupt(tmp_path, one_agent_obs), expected=None).field == "obs"
    assert rejected(corrupt(tmp_path, flat_reward), expected=None).field == "reward"


def test_a_shape_that_does_not_fit_the_map_is_named(tmp_path):
    error = rejected(corrupt(tmp_path, lambda d: None), expected=map_layout("3m"))
    assert error.field == "obs" and "3m" in error.detail


def test_an_action_that_was_not_available_is_named_with_its_episode(tmp_path):
    def forbid_taken_action(d):
        a = d["actions"][2, 1, 0, 0]
        d["avail_actions"][2, 1, 0, a] = 0

    error = rejected(corrupt(tmp_path, forbid_taken_action))
    assert error.field == "actions" and error.episode == 2
    assert "episode 2" in str(error) and "step 1" in error.detail


def test_a_truncated_file_is_rejected(tmp_path):
    path = write_h5(tmp_path / "whole.h5", cfcql_arrays())
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = rejected(cut)
    assert error.field == "file" and "truncated" in error.detail


def test_a_terminal_flag_away_from_the_last_step_is_named(tmp_path):
    def early_end(d):
        d["terminated"][0, 0, 0] = 1

    error = rejected(corrupt(tmp_path, early_end))
    assert error.field == "terminated" and error.episode == 0


def test_filled_rows_after_a_gap_are_named(tmp_path):
    def gap(d):
        d["filled"][3, 2, 0] = 0

    error = rejected(corrupt(tmp_path, gap))
    assert error.field == "filled" and error.episode == 3


def test_the_first_bad_episode_is_the_one_reported(tmp_path):
    def two_problems(d):
        d["terminated"][3, 0, 0] = 1
        d["reward"][1, 0, 0] = np.nan

    error = rejected(corrupt(tmp_path, two_problems))
    assert (error.episode, error.field) == (1, "reward")


def test_inspect_reports_returns_and_infers_wins_from_cfcql_files(tmp_path):
    data = cfcql_arrays()
    data["reward"][0, :3, 0] = [0.0, 0.0, 20.0]  # a won SMAC battle is worth 20
    summary = inspect_dataset(write_h5(tmp_path / "a.h5", data))
    returns = [float(data["reward"][i].sum()) for i in range(len(LENGTHS))]
    assert summary.episodes == len(LENGTHS) and summary.steps == sum(LENGTHS)
    assert summary.return_max == pytest.approx(max(returns)) and summary.return_min == pytest.approx(
        min(returns)
    )
    assert summary.win_rate == pytest.approx(1 / len(LENGTHS)) and not summary.wins_recorded


def test_our_files_record_battle_won(tmp_path):
    episodes = read_episodes(write_h5(tmp_path / "a.h5", cfcql_arrays()))
    episodes[3].meta.battle_won = True
    summary = inspect_dataset(write_dataset(tmp_path / "b.h5", episodes, episode_limit=LIMIT))
    assert summary.wins_recorded and summary.win_rate == pytest.approx(0.25)


def test_behaviour_probs_mix_greedy_and_uniform_over_available_actions():
    avail = np.array([[[1, 1, 0, 1], [0, 1, 0, 0]]])
    probs = behaviour_probs(np.array([[3, 1]]), avail, epsilon=0.3)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    assert (probs[avail == 0] == 0).all()
    assert probs[0, 0, 3] == pytest.approx(0.7 + 0.1) and probs[0, 1, 1] == pytest.approx(1.0)


# --- files of the battle world: held to what the world can produce, as online items are --------


def world_file(tmp_path, change=None) -> Path:
    """A 3m file of honest episodes (random play in the lite world), `change` applied to its arrays."""
    from common.envs.lite import LiteBatchEnv
    from common.envs.policies import RandomPolicy
    from common.episode import EpisodeBuilder

    env = LiteBatchEnv("3m", 4, seed=0)
    builder, policy = EpisodeBuilder(4, env.n_agents, env.episode_limit), RandomPolicy(0)
    seen = env.reset()
    builder.start(seen.state, seen.obs, seen.avail)
    episodes = []
    while len(episodes) < 6:
        actions = policy.act(seen.obs, seen.avail)
        step = env.step(actions)
        episodes += builder.record(actions, step)
        seen = step.next
    path = write_dataset(tmp_path / "3m_world.h5", episodes[:6], episode_limit=env.episode_limit)
    if change is not None:
        with h5py.File(path, "r+") as f:
            data = {key: f[key][...] for key in f.keys()}
            change(data)
            for key, value in data.items():
                f[key][...] = value
    return path


def test_a_file_of_the_worlds_own_episodes_loads_against_its_map(tmp_path):
    assert len(read_episodes(world_file(tmp_path), map_layout("3m"))) == 6


@pytest.mark.parametrize(
    ("what", "change", "field", "detail"),
    [
        ("reward 3e38", lambda d: d["reward"].__setitem__((2, 0, 0), 3e38), "reward", "one step of this map"),
        (
            "observation 3e38",
            lambda d: d["obs"].__setitem__((2, 0, 1, 0), 3e38),
            "obs",
            "outside the features'",
        ),
        (
            "a living agent offered the no-op",
            lambda d: d["avail_actions"].__setitem__((2, 0, 1, 0), 1),
            "avail_actions",
            "both no-op and stop",
        ),
    ],
)
def test_a_value_the_world_cannot_produce_is_named_with_its_file_episode_and_field(
    tmp_path, what, change, field, detail
):
    error = rejected(world_file(tmp_path, change), expected=map_layout("3m"))
    assert (error.field, error.episode) == (field, 2) and detail in error.detail, what
    assert f"episode 2: {field}: " in str(error)
