"""Offline trials on the particle world: every method trains on a transition dataset and is scored
against the card's random and expert returns, and a trial stopped half-way continues from its last
evaluation to the same end as one run straight through."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from deploy.studies.particle_offline import METHODS, OfflineBudget, OfflineTrial, run_trial
from learner.omsd_learner import OMSDConfig
from tests.particle_support import write_random_dataset

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
    return write_random_dataset(tmp_path_factory.mktemp("data") / "spread_random.h5")


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
