"""Offline trials on the particle world: every method trains on a transition dataset and is scored
against the card's random and expert returns, and a trial stopped half-way continues from its last
evaluation to the same end as one run straight through."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from common.envs.particles import SpreadBatchEnv
from deploy.continuous_training import step_transitions
from deploy.studies.particle_offline import METHODS, OfflineBudget, OfflineTrial, run_trial
from learner.omsd_learner import OMSDConfig
from replay.transition_dataset import write_transition_dataset

TINY_OMSD = OMSDConfig(policy_hidden=16, critic_hidden=16, denoiser_hidden=16, denoiser_time_features=8)
BUDGET = OfflineBudget(
    behaviour_steps=6,
    critic_steps=6,
    actor_steps=8,
    batch_size=32,
    eval_interval=4,
    eval_episodes=4,
    final_episodes=8,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    env = SpreadBatchEnv(8, seed=0, max_cycles=25)
    rng = np.random.default_rng(0)
    obs, parts = env.reset(), []
    for _ in range(25):
        actions = rng.uniform(0, 1, (8, 3, 5)).astype(np.float32)
        step = env.step(actions)
        parts.append(step_transitions(obs, actions, step))
        obs = step.next
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    path = tmp_path_factory.mktemp("data") / "spread_random.h5"
    card = {
        "map": "simple_spread",
        "kind": "random",
        "action_low": 0.0,
        "action_high": 1.0,
        "random_return": -110.0,
        "expert_return": -40.0,
    }
    return str(write_transition_dataset(path, arrays, card))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_reports_a_normalised_score(dataset, tmp_path, method):
    result = run_trial(OfflineTrial(dataset, method, 0, BUDGET, TINY_OMSD), tmp_path / method, lambda _: None)
    assert [e["actor_steps"] for e in result["curve"]] == [4, 8]
    assert result["final_score"] == pytest.approx(100 * (result["final_return"] + 110.0) / 70.0)
    assert (tmp_path / method / "eval.csv").read_text().count("\n") == 3
    assert not (tmp_path / method / "state.pt").exists()
    policy = torch.load(tmp_path / method / "policy.pt", weights_only=True)  # the final actors, tensors only
    assert policy and all(isinstance(v, torch.Tensor) for v in policy.values())
    assert result["final_score_ci95"] > 0


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["omsd", "matd3_bc"])
def test_a_trial_stopped_after_an_evaluation_ends_as_one_run_straight_through(dataset, tmp_path, method):
    trial = OfflineTrial(dataset, method, 3, BUDGET, TINY_OMSD)
    straight = run_trial(trial, tmp_path / "straight", lambda _: None)

    def stop_after_first(line):
        if "score" in line:
            raise Stop

    with pytest.raises(Stop):
        run_trial(trial, tmp_path / "stopped", stop_after_first)
    assert (tmp_path / "stopped" / "state.pt").exists() and not (tmp_path / "stopped" / "done.json").exists()
    lines: list[str] = []
    resumed = run_trial(trial, tmp_path / "stopped", lines.append)
    assert resumed == straight
    assert lines == [line for line in lines if "score" in line]  # no pre-training again
    assert len(lines) == 1 and "8/8 actor steps" in lines[0]  # it went on from 4, not from the start


def test_a_finished_trial_is_not_run_again(dataset, tmp_path):
    trial = OfflineTrial(dataset, "bc", 0, BUDGET, TINY_OMSD)
    first = run_trial(trial, tmp_path / "t", lambda _: None)
    (tmp_path / "t" / "done.json").write_text(json.dumps({**first, "final_score": 123.0}))
    assert run_trial(dataclasses.replace(trial), tmp_path / "t", lambda _: None)["final_score"] == 123.0


def test_an_unknown_method_is_refused_naming_the_flag(dataset):
    with pytest.raises(ValueError, match="--method: unknown method 'omsdd'"):
        OfflineTrial(dataset, "omsdd")


def test_omsds_behaviour_and_critic_phases_show_their_progress(dataset, tmp_path):
    lines: list[str] = []
    run_trial(OfflineTrial(dataset, "omsd", 0, BUDGET, TINY_OMSD), tmp_path / "t", lines.append)
    assert [line.split(": ")[1].split(" (")[0] for line in lines[:2]] == ["behaviour 4/6", "critic 4/6"]
