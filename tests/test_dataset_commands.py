"""`ovmse dataset collect | validate | inspect`: files, cards, plots, and one-line errors."""

from __future__ import annotations

import argparse
import json

import h5py
import pytest

from deploy.cli import build_parser
from deploy.replay_commands import dataset_collect, dataset_inspect, dataset_validate, default_plot_path
from replay.dataset import CFCQL_KEYS
from replay.dataset_writer import card_path


def collect_args(out, *extra, policy="heuristic", epsilon=0.2, envs=4):
    return build_parser().parse_args(
        [
            "dataset",
            "collect",
            "--map",
            "3m",
            "--out",
            str(out),
            "--policy",
            policy,
            "--epsilon",
            str(epsilon),
            "--envs",
            str(envs),
            *extra,
        ]
    )


def path_args(command, path, **extra):
    return argparse.Namespace(command=f"dataset {command}", subcommand=command, path=str(path), **extra)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "3m_heuristic.h5"
    assert dataset_collect(collect_args(out, "--episodes", "6")) == 0
    return out


def test_collect_writes_a_cfcql_file_and_its_card(collected):
    with h5py.File(collected, "r") as f:
        assert sorted(f.keys()) == sorted(CFCQL_KEYS) and f["actions"].shape[:2] == (6, 61)
        probs = f["probs"][:]
        filled = f["filled"][:, :, 0].astype(bool)
        assert abs(probs.sum(-1)[:, :-1][filled[:, 1:]] - 1.0).max() < 1e-5, "a distribution per step taken"
    card = json.loads(card_path(collected).read_text())
    assert card["episodes"] == 6 and card["map_name"] == "3m" and card["policy"] == "heuristic"
    assert card["return_min"] <= card["return_mean"] <= card["return_max"] and 0.0 <= card["win_rate"] <= 1.0


def test_validate_accepts_a_collected_file_for_its_map(collected, capsys):
    assert dataset_validate(path_args("validate", collected, map="3m")) == 0
    assert "valid for map 3m: 6 episodes" in capsys.readouterr().out


def test_validate_names_the_key_of_a_file_made_for_another_map(collected, capsys):
    assert dataset_validate(path_args("validate", collected, map="8m")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(collected) in err and "8m" in err


def test_validate_names_the_first_bad_episode_and_field(collected, tmp_path, capsys):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(collected.read_bytes())
    with h5py.File(broken, "r+") as f:
        actions = f["actions"][4]
        avail = f["avail_actions"][4]
        avail[2, 1, actions[2, 1, 0]] = 0
        f["avail_actions"][4] = avail
    assert dataset_validate(path_args("validate", broken)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "episode 4: actions:" in err


def test_validate_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert dataset_validate(path_args("validate", tmp_path / "nope.h5")) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_prints_the_summary_and_writes_a_histogram(collected, capsys):
    assert dataset_inspect(path_args("inspect", collected)) == 0
    out = capsys.readouterr().out
    assert "episodes   6" in out and "return" in out and "win rate" in out
    plot = default_plot_path(collected)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collecting_with_a_missing_checkpoint_names_it_in_one_line(tmp_path, capsys):
    args = collect_args(tmp_path / "x.h5", "--episodes", "2", policy="checkpoint:runs/x.pt")
    assert dataset_collect(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint:runs/x.pt: no such file" in err
    assert not (tmp_path / "x.h5").exists()


def greedy_agreement(agent, episodes) -> float:
    """Share of the recorded agent-steps on which the action is `agent`'s greedy available one."""
    import numpy as np
    import torch

    from common.networks import build_agent_inputs, previous_actions_onehot

    same = total = 0
    for ep in episodes:
        obs = torch.from_numpy(ep.obs)[None]
        prev = previous_actions_onehot(torch.from_numpy(ep.actions)[None], agent.fc2.out_features)
        with torch.no_grad():
            q = agent.forward_sequence(build_agent_inputs(obs, prev, ep.obs.shape[1]))[0].numpy()
        steps = ep.length
        greedy = np.where(ep.avail_actions[:steps].astype(bool), q[:steps], -np.inf).argmax(-1)
        same += int((greedy == ep.actions[:steps, :, 0]).sum())
        total += greedy.size
    return same / total


def test_collecting_with_a_learner_checkpoint_plays_that_checkpoints_policy(tmp_path):
    from common.config import resolve_config
    from common.envs.lite import LiteBatchEnv
    from learner.checkpoint import save_checkpoint
    from learner.qmix_learner import QMixLearner
    from replay.dataset import load_episodes

    cfg = resolve_config(map_name="3m", method="qmix")
    info = LiteBatchEnv("3m").get_env_info()
    # Seeded unlike the collector's own learner (run.seed 0), so only the file's weights play this.
    learner = QMixLearner(info, cfg.learner, seed=123)
    checkpoint = save_checkpoint(learner, tmp_path / "qmix.pt")
    out = tmp_path / "3m_ckpt.h5"
    args = collect_args(out, "--episodes", "5", policy=f"checkpoint:{checkpoint}", epsilon=0.0)
    assert dataset_collect(args) == 0
    card = json.loads(card_path(out).read_text())
    assert card["episodes"] == 5 and card["policy"] == f"checkpoint:{checkpoint}"
    episodes = load_episodes(out)
    assert greedy_agreement(learner.agent, episodes) == 1.0  # greedy play of the checkpoint, step by step
    other = QMixLearner(info, cfg.learner, seed=0).agent  # what the collector would play without the file
    assert greedy_agreement(other, episodes) < 0.9


def test_collecting_with_a_random_policy_works_too(tmp_path):
    out = tmp_path / "3m_random.h5"
    assert dataset_collect(collect_args(out, "--episodes", "3", policy="random", epsilon=0.0)) == 0
    assert json.loads(card_path(out).read_text())["policy"] == "random"
