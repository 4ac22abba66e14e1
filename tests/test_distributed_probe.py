"""What a distributed run shows about the start of online training, as the one-process trainer does:
the learner process draws the offline curve while it pre-trains, and the evaluator process logs
how often the greedy joint action on the starting policy's own episodes is still the one it chose
("policy agreement"), beside the learner's OVM-active fraction."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from common.config import resolve_config
from common.envs.lite import LiteBatchEnv
from common.networks import agent_network
from common.run_log import RunLog
from learner.weight_service import WeightPublisher


def agent_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return agent_network(LiteBatchEnv("3m", num_envs=1).get_env_info()).state_dict()


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_evaluator_logs_policy_agreement_with_the_starting_policy_and_rebuilds_it_after_a_restart(
    tmp_path,
):
    from deploy.roles import evaluator_role

    publisher = WeightPublisher(port=0)
    cfg = resolve_config(
        map_name="3m",
        method="ovmse",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=probe",
            f"actor.weight_server={publisher.address}",
            "actor.test_episodes=4",
            "actor.final_test_episodes=0",
            "run.eval_interval_steps=1000",
        ],
    )
    log = RunLog(tmp_path / "probe")
    start, other = agent_weights(0), agent_weights(1)
    stop = threading.Event()
    try:
        publisher.publish(start, 1, extra={"env_steps": 0, "start": True}, start=True)
        thread = threading.Thread(target=lambda: evaluator_role(cfg, stop))
        thread.start()
        wait_for(lambda: len(log.read("eval")) >= 1)
        publisher.publish(start, 2, extra={"env_steps": 1000, "ovm_active_fraction": 0.25})
        wait_for(lambda: len(log.read("eval")) >= 2)
        publisher.publish(other, 3, extra={"env_steps": 2000, "ovm_active_fraction": 0.5})
        wait_for(lambda: len(log.read("eval")) >= 3)
        stop.set()
        thread.join(timeout=60)
        first, same, moved = log.read("eval")
        assert first["policy_agreement"] == 1.0 and first["episodes"] == 32  # the probe's episodes
        assert same["policy_agreement"] == 1.0 and same["ovm_active_fraction"] == 0.25
        assert moved["policy_agreement"] < 0.9 and moved["ovm_active_fraction"] == 0.5

        # Restarted, the evaluator replays the start weights on the same battles: the same probe.
        stop.clear()
        publisher.publish(other, 4, extra={"env_steps": 3000, "done": True})
        result = evaluator_role(cfg, stop)
        evals = log.read("eval")
        assert [e["env_steps"] for e in evals] == [0, 1000, 2000, 3000]
        assert evals[-1]["policy_agreement"] == pytest.approx(moved["policy_agreement"])
        assert any(p.endswith("probe.png") for p in result["plots"])
    finally:
        stop.set()
        publisher.stop()


def test_the_learner_process_draws_the_offline_curve_while_it_pre_trains(tmp_path):
    from common.net import pick_free_port
    from deploy.builder import Builder
    from deploy.recipes import CollectRequest, collect_dataset
    from deploy.roles import learner_role

    dataset = tmp_path / "3m.h5"
    cfg = resolve_config(
        map_name="3m",
        method="ovmse",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=learner",
            f"run.dataset={dataset}",
            "learner.offline_updates=20",
            "run.offline_eval_interval=10",
            "learner.batch_size=8",
            "learner.behaviour_pretrain_updates=0",
            "actor.test_episodes=4",
            "run.online_env_steps=0",
            f"replay.port={pick_free_port()}",
            f"actor.weight_server=127.0.0.1:{pick_free_port()}",
        ],
    )
    collect_dataset(cfg, CollectRequest(out=str(dataset), episodes=24, num_envs=8), progress=False)
    server = Builder(cfg).replay_server()
    stop = threading.Event()
    try:
        thread = threading.Thread(target=lambda: learner_role(cfg, stop))
        thread.start()
        wait_for(lambda: (cfg.run.path / "checkpoints" / "learner.pt").exists(), timeout_s=300)
        stop.set()
        thread.join(timeout=60)
    finally:
        stop.set()
        server.stop()
    curve = RunLog(cfg.run.path).read("offline_eval")
    assert [r["updates"] for r in curve] == [10, 20]
    assert all(r["episodes"] == 4 and r["win_rate_low"] <= r["win_rate"] <= r["win_rate_high"] for r in curve)
    assert (cfg.run.path / "offline_win_rate.png").read_bytes()[:4] == b"\x89PNG"
