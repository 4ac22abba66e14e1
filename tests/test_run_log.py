"""A run directory keeps the config, every metric record, and the curves people look at."""

from __future__ import annotations

import io
import json

import torch

from actors.evaluator import evaluate
from actors.rollout import RolloutWorker
from common.config import resolve_config
from common.envs.lite import LiteBatchEnv
from common.networks import agent_network as make_agent
from common.run_log import ProgressLine, RunLog


def test_records_land_in_jsonl_and_csv_and_curves_in_png(tmp_path):
    log = RunLog(tmp_path / "run")
    log.write_config(resolve_config(map_name="2s3z", dataset="medium", method="ovmse"))
    for step, win in [(0, 0.5), (1000, 0.6), (2000, 0.7)]:
        log.log("eval", env_steps=step, win_rate=win, **{"return": 10 + win})
    log.close()
    run = tmp_path / "run"
    assert "map_name: 2s3z" in (run / "config.yaml").read_text()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["win_rate"] for r in lines] == [0.5, 0.6, 0.7] and all(r["kind"] == "eval" for r in lines)
    assert (run / "eval.csv").read_text().splitlines()[0].startswith("time,env_steps,win_rate,return")
    paths = RunLog(run).plot_eval(offline_win_rate=0.5)
    assert {p.name for p in paths} == {"test_win_rate.png", "test_return.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_progress_line_shows_rate_and_eta():
    out = io.StringIO()
    line = ProgressLine(total_steps=1000, every_s=0.0, stream=out)
    line.maybe_print(250, test_win_rate=0.5, updates_per_s=3.0)
    text = out.getvalue()
    assert "env steps 250/1,000" in text and "ETA" in text and "test win rate 0.5" in text


def test_evaluation_is_greedy_and_counts_wins():
    env = LiteBatchEnv("3m", num_envs=4, seed=0)
    torch.manual_seed(0)
    worker = RolloutWorker(env, make_agent(env.get_env_info()), exploration="decentralized_se")
    result = evaluate(worker, 8)
    assert result.episodes == 8 and 0.0 <= result.win_rate <= 1.0
    assert worker.exploration == "decentralized_se"  # restored after the test episodes


def test_a_new_run_never_writes_into_an_earlier_runs_directory(tmp_path):
    from common.run_log import fresh_run_dir

    first = fresh_run_dir(tmp_path / "exp")
    RunLog(first).log("eval", env_steps=0)
    second = fresh_run_dir(tmp_path / "exp")
    assert first.name == "exp" and second.name == "exp_2"
