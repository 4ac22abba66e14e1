"""A one-process trial stopped half-way goes on from its trainer state (checkpoints/trainer.pt)
and ends with exactly the evaluations of a run that never stopped: the battles mid-episode, the
replay, the learner and every generator come back as they were. A finished trial goes on from the
state taken at its end when resumed with a larger budget, and nothing else may change on resume.
Offline pre-training does the same from checkpoints/pretrain.pt."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest
import torch
import yaml

from common.config import resolve_config
from common.errors import InputError
from common.run_log import RunLog
from deploy import single_process
from deploy.recipes import CollectRequest, collect_dataset
from deploy.single_process import pretrain, train_sync
from deploy.trainer_state import PRETRAIN_FILE, trainer_state_path
from learner.checkpoint import read_checkpoint

SAME = ("env_steps", "win_rate", "return", "updates", "policy_version", "policy_agreement", "probe_q")


class Stopped(Exception):
    """Stands for the process being killed."""


def config(tmp):
    overrides = {
        "run.dataset": str(tmp / "3m.h5"),
        "run.log_interval_s": "1000",
        "learner.batch_size": "8",
        "learner.batch_size_run": "2",
        "learner.offline_updates": "6",
        "learner.rnn_hidden_dim": "16",
        "learner.behaviour_pretrain_updates": "0",
        "run.online_env_steps": "1000",
        "run.eval_interval_steps": "200",
        "run.trainer_checkpoint_interval_s": "1e-9",  # after every evaluation
        "actor.test_episodes": "4",
        "actor.final_test_episodes": "8",
        "replay.online_capacity": "64",
    }
    return resolve_config("3m", "medium", "ovmse", overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    cfg = config(tmp)
    collect_dataset(
        cfg,
        CollectRequest(out=cfg.run.dataset, episodes=40, policy="heuristic", epsilon=0.2, num_envs=8),
        progress=False,
    )
    result = train_sync(cfg, run_dir=tmp / "straight", progress=False)
    return tmp, cfg, result


def rows(run_dir, kind="eval"):
    return [{k: r.get(k) for k in SAME} for r in RunLog(run_dir).read(kind)]


def test_a_stopped_trial_resumes_from_its_trainer_state_and_ends_with_the_same_evaluations(straight_run):
    tmp, cfg, straight = straight_run
    run_dir = tmp / "stopped"

    def stop_at_the_fourth_evaluation(record: dict) -> bool:
        if record["env_steps"] >= 800:
            raise Stopped
        return False

    with pytest.raises(Stopped):
        train_sync(cfg, run_dir=run_dir, progress=False, stop_when=stop_at_the_fourth_evaluation)
    assert trainer_state_path(run_dir).is_file()
    assert rows(run_dir)[-1]["env_steps"] == 800  # logged before the stop, after the last state

    seen = []
    resumed = train_sync(
        cfg, run_dir=run_dir, progress=False, resume=True, stop_when=lambda r: seen.append(r["env_steps"])
    )
    assert resumed.run_dir == run_dir
    assert seen[0] == 800  # it went on from the state taken at 600: nothing before it was redone
    assert rows(run_dir) == rows(tmp / "straight")  # each evaluation once, the same as straight through
    assert rows(run_dir, "final_eval") == rows(tmp / "straight", "final_eval")
    assert (resumed.final_win_rate, resumed.updates) == (straight.final_win_rate, straight.updates)


def test_a_finished_trial_is_extended_by_resuming_it_with_a_larger_budget(straight_run, tmp_path):
    tmp, cfg, straight = straight_run
    run_dir = tmp_path / "extended"
    shutil.copytree(tmp / "straight", run_dir)
    larger = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, online_env_steps=1400))

    seen = []
    extended = train_sync(
        larger, run_dir=run_dir, progress=False, resume=True, stop_when=lambda r: seen.append(r["env_steps"])
    )
    assert seen[0] == 1200  # on from the end of the finished run, not from its last mid-run state
    assert extended.online_env_steps == 1400 and extended.updates > straight.updates
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["online_env_steps"] == 1400
    assert [r["env_steps"] for r in rows(run_dir)] == [0, 200, 400, 600, 800, 1000, 1200, 1400]
    assert len(rows(run_dir, "final_eval")) == 1  # the first end's final evaluation went with its state


def test_resuming_a_trial_with_a_setting_that_cannot_change_is_refused_naming_it(straight_run, tmp_path):
    tmp, cfg, _ = straight_run
    run_dir = tmp_path / "changed"
    shutil.copytree(tmp / "straight", run_dir)
    other = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, lr=0.1))
    with pytest.raises(InputError, match=r"^--set learner\.lr: cannot be changed on --resume"):
        train_sync(other, run_dir=run_dir, progress=False, resume=True)


def test_the_first_progress_line_shows_the_starting_policy_s_win_rate_not_nan(tmp_path, capsys):
    overrides = {
        "run.run_dir": str(tmp_path),
        "run.log_interval_s": "1000",  # the first line and the last only
        "learner.batch_size": "8",
        "learner.batch_size_run": "2",
        "run.online_env_steps": "100",
        "run.eval_interval_steps": "100",
        "actor.test_episodes": "4",
        "actor.final_test_episodes": "0",
    }
    cfg = resolve_config("3m", method="qmix", overrides=[f"{k}={v}" for k, v in overrides.items()])
    train_sync(cfg, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  env steps")]
    assert "nan" not in lines[0] and re.search(r"test win rate \d", lines[0]), lines[0]


def test_a_stopped_pre_training_resumes_after_its_last_evaluation_and_ends_as_one_never_stopped(
    straight_run, tmp_path, monkeypatch
):
    tmp, cfg, _ = straight_run
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, offline_eval_interval=2))
    straight = pretrain(cfg, run_dir=tmp_path / "straight", progress=False)

    saved = []
    save = single_process.save_trainer_state

    def killed_after_the_second_state(*args, **kwargs):
        saved.append(save(*args, **kwargs))
        if len(saved) == 2:
            raise Stopped

    monkeypatch.setattr(single_process, "save_trainer_state", killed_after_the_second_state)
    with pytest.raises(Stopped):
        pretrain(cfg, run_dir=tmp_path / "stopped", progress=False)
    assert saved == [trainer_state_path(tmp_path / "stopped", PRETRAIN_FILE)] * 2
    monkeypatch.setattr(single_process, "save_trainer_state", save)

    went_on_from = []
    phase = single_process.run_offline_phase

    def recorded(*args, done: int = 0, **kwargs):
        went_on_from.append(done)
        return phase(*args, done=done, **kwargs)

    monkeypatch.setattr(single_process, "run_offline_phase", recorded)
    resumed = pretrain(cfg, run_dir=tmp_path / "stopped", progress=False, resume=True)
    assert went_on_from == [4]  # after the evaluation at 4 of 6 updates, not from the start
    assert resumed.run_dir == tmp_path / "stopped"
    fields = ("updates", "win_rate", "return", "greedy_agreement", "q_greedy_minus_data", "q_data")
    curves = [
        [{k: r.get(k) for k in fields} for r in RunLog(d).read("offline_eval")]
        for d in (tmp_path / "straight", tmp_path / "stopped")
    ]
    assert [r["updates"] for r in curves[1]] == [2, 4, 6] and curves[0] == curves[1]
    assert (resumed.final_win_rate, resumed.final_return) == (straight.final_win_rate, straight.final_return)
    weights = [
        read_checkpoint(d / "checkpoints" / "offline.pt")[0]["agent"]
        for d in (tmp_path / "straight", tmp_path / "stopped")
    ]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
