"""Every evaluation that is logged or printed carries its 95% intervals next to the values: the win
rate's Wilson interval and the return's half-width, in the run log, the CSV, the plots and the CLI."""

from __future__ import annotations

import re

import pytest

from actors.eval_process import log_result
from actors.evaluator import EvalResult
from common.config import resolve_config
from common.run_log import RunLog, eval_bands, win_rate_text
from common.stats import wilson_interval

INTERVAL_KEYS = ("win_rate", "win_rate_low", "win_rate_high", "return", "return_ci")


def a_checkpoint(cfg, path):
    from common.envs.factory import make_batch_env
    from learner.checkpoint import save_checkpoint
    from learner.qmix_learner import QMixLearner

    return save_checkpoint(QMixLearner(make_batch_env(cfg.env, 1).get_env_info(), cfg.learner), path)


def test_the_evaluator_process_logs_intervals_next_to_win_rate_and_return(tmp_path):
    log = RunLog(tmp_path)
    result = EvalResult(10, 0.5, 3.0, 4, win_rate_low=0.2366, win_rate_high=0.7634, return_ci=0.8)
    log_result(log, "eval", 1000, result, updates=7)
    log.close()
    (row,) = RunLog(tmp_path).read("eval")
    assert {k: row[k] for k in INTERVAL_KEYS} == {
        "win_rate": 0.5,
        "win_rate_low": 0.2366,
        "win_rate_high": 0.7634,
        "return": 3.0,
        "return_ci": 0.8,
    }
    header = (tmp_path / "eval.csv").read_text().splitlines()[0]
    assert header.startswith("time,env_steps,win_rate,win_rate_low,win_rate_high,return,return_ci")


def test_every_eval_row_of_a_sync_run_carries_the_same_keys_with_intervals(tmp_path):
    from deploy.single_process import train_sync

    overrides = [
        f"run.run_dir={tmp_path}",
        "run.online_env_steps=300",
        "run.eval_interval_steps=150",
        "learner.batch_size=8",
        "replay.min_size_to_sample=8",
        "actor.test_episodes=4",
        "run.log_interval_s=1000",
    ]
    cfg = resolve_config(map_name="3m", method="qmix", overrides=overrides)
    start = a_checkpoint(cfg, tmp_path / "start.pt")
    # Starting from a checkpoint: the run scores it at step 0, as it does a pre-trained policy.
    cfg = resolve_config(map_name="3m", method="qmix", overrides=[*overrides, f"run.init_checkpoint={start}"])
    result = train_sync(cfg, progress=False, final_test_episodes=6)
    log = RunLog(result.run_dir)
    evals, finals = log.read("eval"), log.read("final_eval")
    assert evals[0]["env_steps"] == 0 and len(evals) >= 2 and len(finals) == 1
    assert all(set(row) == set(evals[0]) for row in evals)  # the CSV keeps the first row's columns
    assert set(INTERVAL_KEYS) <= set(evals[0]) and set(INTERVAL_KEYS) <= set(finals[0])
    header = (result.run_dir / "eval.csv").read_text().splitlines()[0].split(",")
    assert set(header) == set(evals[-1]) - {"kind"}
    for row, n in [(evals[0], 32), (evals[-1], 4), (finals[0], 6)]:  # step 0 also plays the probe
        wins = round(row["win_rate"] * n)
        assert (row["win_rate_low"], row["win_rate_high"]) == pytest.approx(wilson_interval(wins, n))
        assert row["return_ci"] >= 0.0


def test_plots_shade_the_intervals_and_old_logs_without_them_still_plot(tmp_path):
    log = RunLog(tmp_path / "new")
    for step, win, low, high in [(0, 0.5, 0.25, 0.75), (1000, 0.75, 0.5, 0.875)]:
        log.log(
            "eval",
            env_steps=step,
            win_rate=win,
            win_rate_low=low,
            win_rate_high=high,
            **{"return": 10.0},
            return_ci=1.5,
        )
    assert eval_bands(log.read("eval")) == {
        "win_rate": ([0, 1000], [0.25, 0.5], [0.75, 0.875]),
        "return": ([0, 1000], [8.5, 8.5], [11.5, 11.5]),
    }
    assert len(log.plot_eval(offline_win_rate=0.5)) == 2

    old = RunLog(tmp_path / "old")
    for step, win in [(0, 0.5), (1000, 0.7)]:
        old.log("eval", env_steps=step, win_rate=win, **{"return": 10.0})
    assert eval_bands(old.read("eval")) == {}
    paths = old.plot_eval()
    assert {p.name for p in paths} == {"test_win_rate.png", "test_return.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_evaluating_a_checkpoint_prints_the_win_rate_with_its_interval(tmp_path, capsys):
    from deploy import cli

    path = a_checkpoint(resolve_config(map_name="3m"), tmp_path / "policy.pt")
    assert cli.main(["evaluate", "--map", "3m", "--checkpoint", str(path), "--episodes", "6"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"6 greedy episodes .*win rate (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", out)
    assert found, out
    win, low, high = map(float, found.groups())
    assert (low, high) == pytest.approx(wilson_interval(round(win * 6), 6), abs=5e-4)


def test_run_summaries_show_the_win_rate_with_its_interval_when_logged():
    assert win_rate_text({"win_rate": 0.32, "win_rate_low": 0.2853, "win_rate_high": 0.3574}) == (
        "0.320 [0.285, 0.357]"
    )
    assert win_rate_text({"win_rate": 0.32}) == "0.320"  # a log from before intervals were recorded


def test_an_exported_agent_is_small_loads_without_pickle_and_evaluates_like_its_checkpoint(tmp_path, capsys):
    import torch

    from common.config.loading import write_config
    from deploy import cli

    cfg = resolve_config(map_name="3m")
    run = tmp_path / "run"
    write_config(cfg, run / "config.yaml")
    checkpoint = a_checkpoint(cfg, run / "checkpoints" / "final.pt")
    agent = tmp_path / "agent.pt"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(agent)]) == 0
    assert agent.stat().st_size < checkpoint.stat().st_size / 2 and agent.stat().st_size < 1 << 20
    payload = torch.load(agent, weights_only=True)
    assert payload["kind"] == "ovmse-agent" and payload["identity"]["map"] == "3m"

    capsys.readouterr()
    assert cli.main(["evaluate", "--map", "3m", "--checkpoint", str(checkpoint), "--episodes", "6"]) == 0
    from_checkpoint = capsys.readouterr().out.split(": ", 1)[1]
    # The agent file names its map, so no --map is needed; the same weights play the same battles.
    assert cli.main(["evaluate", "--checkpoint", str(agent), "--episodes", "6"]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == from_checkpoint

    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(agent)]) == 2  # no overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["evaluate", "--map", "2s3z", "--checkpoint", str(agent), "--episodes", "2"]) == 2
    assert "exported for map 3m, not 2s3z" in capsys.readouterr().err
