"""The particle world's offline datasets: transition files that carry their card and are checked
whole before use, the maker that trains MATD3 and draws expert, medium, medium-replay and random
data from it, resumably, and the mixed data of experts that may coordinate differently, told apart by
which landmark each agent ends at (the assignment signature)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.envs.particle_assignment import (
    assignment_disagreement,
    assignment_signature,
    coverage,
    covers_all,
    disagreement_matrix,
    nearest_landmarks,
    rotate_landmarks,
    shared_roles,
    usual_assignment,
)
from common.envs.particles import SpreadBatchEnv
from common.errors import InputError
from deploy.studies import particle_datasets
from deploy.studies.particle_datasets import (
    ParticleDatasetConfig,
    make_datasets,
    normalised_score,
    pick_medium,
)
from learner.matd3_learner import MATD3Learner
from replay.transition_dataset import read_transition_dataset, write_transition_dataset

CARD = {"map": "simple_spread", "kind": "expert", "action_low": 0.0, "action_high": 1.0}


@pytest.fixture
def one_torch_thread():
    """The maker's own setting (its commands run torch on one thread): on a busy machine torch's
    default threads only contend, and the tiny runs take several times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_the_maker_writes_four_datasets_from_one_matd3_run_and_resumes_without_retraining(
    tmp_path, one_torch_thread
):
    cfg = ParticleDatasetConfig(
        env_steps=3_000,
        transitions=300,
        eval_interval=500,
        score_episodes=16,
        num_envs=16,
        warmup=200,
        batch_size=64,
        mixed_experts=2,  # the mixed dataset's own test is below
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


# --- how a joint policy coordinates: the assignment signature -----------------------------------------

LANDMARKS = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def test_each_agent_is_assigned_its_nearest_landmark_and_a_permutation_covers_all_three():
    agents = np.array(
        [
            [[0.1, 0.9], [0.1, -0.1], [0.9, 0.2]],  # agents at landmarks 2, 0, 1: a permutation
            [[0.1, 0.1], [-0.2, 0.0], [0.8, 0.1]],  # two agents at landmark 0: landmark 2 uncovered
        ]
    )
    assignment = nearest_landmarks(agents, np.array([LANDMARKS, LANDMARKS]))
    np.testing.assert_array_equal(assignment, [[2, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(covers_all(assignment), [True, False])
    assert coverage(assignment) == 0.5
    assert coverage([[0, 0, 0]]) == 0.0 and coverage([[1, 2, 0]]) == 1.0


def test_a_policys_usual_assignment_is_its_most_frequent_permutation_among_covered_starts():
    # Fixed roles (1, 2, 0) in two of three covered starts; uncovered starts do not count.
    signature = [[1, 2, 0], [0, 0, 0], [1, 2, 0], [2, 1, 0], [1, 1, 1], [0, 0, 2]]
    assert usual_assignment(signature) == ([1, 2, 0], 2 / 3)
    assert usual_assignment([[0, 0, 0]]) == ([], 0.0)


def test_disagreement_is_the_fraction_of_starts_where_any_agents_landmark_differs():
    first = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0], [1, 1, 0]])
    second = np.array([[1, 0, 2], [0, 1, 2], [2, 1, 0], [1, 1, 2]])
    assert assignment_disagreement(first, first) == 0.0
    assert assignment_disagreement(first, second) == 0.5
    assert disagreement_matrix([first, second, first]) == [[0.0, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.0]]
    with pytest.raises(ValueError, match="one shape"):
        assignment_disagreement(first, second[:3])


def steer_to(targets: list[int]):
    """A scripted joint policy: agent i heads for landmark targets[i] (read from its observation,
    landmarks relative at 4 + 2l), braking on its own velocity (at 0)."""
    index = 4 + 2 * np.asarray(targets)

    def act(obs: np.ndarray) -> np.ndarray:
        agents = np.arange(obs.shape[1])
        to_target = np.stack([obs[:, agents, index], obs[:, agents, index + 1]], axis=-1)
        push = np.clip(2.0 * to_target - 0.5 * obs[..., 0:2], -1.0, 1.0)
        actions = np.zeros((*obs.shape[:2], 5), dtype=np.float32)
        actions[..., 1], actions[..., 2] = np.maximum(-push[..., 0], 0), np.maximum(push[..., 0], 0)
        actions[..., 3], actions[..., 4] = np.maximum(-push[..., 1], 0), np.maximum(push[..., 1], 0)
        return actions

    return act


def test_a_policy_agrees_with_itself_and_disagrees_everywhere_with_its_agents_roles_swapped():
    by_index = assignment_signature(steer_to([0, 1, 2]), episodes=64, seed=5)
    swapped = assignment_signature(steer_to([1, 0, 2]), episodes=64, seed=5)
    np.testing.assert_array_equal(by_index, np.tile([0, 1, 2], (64, 1)))  # the signature is where they went
    assert assignment_disagreement(by_index, assignment_signature(steer_to([0, 1, 2]), 64, seed=5)) == 0.0
    assert assignment_disagreement(by_index, swapped) == 1.0
    # the signature is read at the last step, not the first: the starts alone give other landmarks
    env = SpreadBatchEnv(64, seed=5)
    env.reset()
    assert assignment_disagreement(by_index, nearest_landmarks(env.agent_pos, env.landmark_pos)) > 0.5


# --- the mixed dataset --------------------------------------------------------------------------------

MIXED = ParticleDatasetConfig(
    env_steps=1_000,
    transitions=300,
    eval_interval=500,
    score_episodes=8,
    behaviour_noise=0.0,  # greedy, so each share's actions name the expert that took them
    num_envs=8,
    warmup=200,
    batch_size=32,
    mixed_experts=3,
)


def greedy_actions(actors: dict, obs: np.ndarray) -> np.ndarray:
    info = SpreadBatchEnv(1, seed=0).get_env_info()
    learner = MATD3Learner(info)
    learner.actors.load_state_dict(actors)
    return learner.act(obs)


def test_rotating_the_landmarks_moves_only_the_landmark_block_of_an_observation():
    obs = SpreadBatchEnv(2, seed=3).reset().obs  # [B, n, 18]
    once = rotate_landmarks(obs, 3, 1)
    landmarks = obs[..., 4:10].reshape(2, 3, 3, 2)
    np.testing.assert_array_equal(once[..., 4:10].reshape(2, 3, 3, 2)[:, :, 1], landmarks[:, :, 0])
    np.testing.assert_array_equal(once[..., 4:10].reshape(2, 3, 3, 2)[:, :, 0], landmarks[:, :, 2])
    np.testing.assert_array_equal(np.delete(once, range(4, 10), -1), np.delete(obs, range(4, 10), -1))
    np.testing.assert_array_equal(rotate_landmarks(obs, 3, 3), obs)
    assert not np.shares_memory(once, obs)


def test_the_mixed_dataset_holds_equal_shares_of_the_expert_under_each_landmark_rotation(
    tmp_path, monkeypatch, one_torch_thread
):
    trained = []

    def spy(make_env, cfg, progress):
        trained.append(cfg.seed)
        return train_matd3(make_env, cfg, progress)

    train_matd3 = particle_datasets.train_matd3
    monkeypatch.setattr(particle_datasets, "train_matd3", spy)
    summary = make_datasets(tmp_path, MIXED, progress=lambda _: None)
    assert trained == [0]  # one MATD3 run for every dataset, the mixed one included
    data, card = read_transition_dataset(tmp_path / "simple_spread_mixed.h5", "simple_spread")
    assert card["kind"] == "mixed" and card["transitions"] == 300
    assert (card["random_return"], card["expert_return"]) == (
        summary["random_return"],
        summary["expert_return"],
    )
    assert [e["landmark_shift"] for e in card["experts"]] == [0, 1, 2]
    assert [e["transitions"] for e in card["experts"]] == [100, 100, 100]
    assert card["experts"][0]["greedy_return"] == summary["expert_return"]
    assert all(0.0 <= e["usual_share"] <= 1.0 and "usual_assignment" in e for e in card["experts"])
    assert card["experts"] == summary["mixed_experts"]
    matrix = np.array(card["assignment_disagreement"])
    assert matrix.shape == (3, 3) and (np.diag(matrix) == 0).all() and (matrix == matrix.T).all()
    snapshots = torch.load(tmp_path / "matd3_snapshots.pt", weights_only=True)
    expert = snapshots[f"actors_{snapshots['expert']}"]
    for shift in range(3):  # each block is the expert acting on observations rotated by its shift
        rows = slice(100 * shift, 100 * (shift + 1))
        acted = greedy_actions(expert, rotate_landmarks(data["obs"][rows], 3, shift))
        np.testing.assert_allclose(acted, data["actions"][rows])
    assert not np.allclose(greedy_actions(expert, data["obs"][100:200]), data["actions"][100:200])

    def refuse(*_):
        raise AssertionError("trained again")

    monkeypatch.setattr(particle_datasets, "train_matd3", refuse)
    path = tmp_path / "simple_spread_mixed.h5"
    before = path.stat().st_mtime_ns
    make_datasets(tmp_path, MIXED, progress=lambda _: None)
    assert path.stat().st_mtime_ns == before  # a finished file is kept
    path.unlink()  # made again from the expert's snapshot, not a new run, and the same
    make_datasets(tmp_path, MIXED, progress=lambda _: None)
    again, _ = read_transition_dataset(path, "simple_spread")
    for name, value in data.items():
        np.testing.assert_array_equal(again[name], value)


def test_experts_that_coordinate_alike_still_make_the_file_with_a_one_line_warning(
    tmp_path, monkeypatch, one_torch_thread
):
    # Rotations that rotate nothing: every "expert" is the same policy on the same starts.
    monkeypatch.setattr(particle_datasets, "rotate_landmarks", lambda obs, n, shift: obs)
    said = []
    make_datasets(tmp_path, replace(MIXED, mixed_experts=2, behaviour_noise=0.1), progress=said.append)
    _, card = read_transition_dataset(tmp_path / "simple_spread_mixed.h5", "simple_spread")
    assert card["assignment_disagreement"] == [[0.0, 0.0], [0.0, 0.0]]
    assert card["experts"][1]["greedy_return"] == pytest.approx(card["experts"][0]["greedy_return"])
    warnings = [line for line in said if "coordinate alike" in line]
    assert len(warnings) == 1 and "0%" in warnings[0] and "not multimodal" in warnings[0]


@pytest.mark.parametrize("experts", [1, 4])
def test_a_mixed_dataset_needs_two_to_three_rotations(tmp_path, experts):
    with pytest.raises(InputError, match="mixed_experts: must be 2 to 3"):
        make_datasets(tmp_path, replace(MIXED, mixed_experts=experts), progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_policies_that_all_hold_the_same_fixed_roles_share_them_and_others_do_not():
    assert shared_roles([([1, 2, 0], 0.98), ([1, 2, 0], 0.83)]) == [1, 2, 0]
    assert shared_roles([([1, 2, 0], 0.98), ([0, 2, 1], 0.9)]) is None  # different roles
    assert shared_roles([([1, 2, 0], 0.98), ([1, 2, 0], 0.3)]) is None  # one holds to no roles
    assert shared_roles([([1, 2, 0], 0.98), ([], 0.0)]) is None  # one never covers every landmark
