"""Weights flow from the learner to actors over gRPC: versions only go forward, and actors survive
a learner restart."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

from actors.rollout import RolloutWorker
from actors.weight_client import WeightSubscriber, fetch_latest
from common.envs.lite import LiteBatchEnv
from common.networks import agent_network as make_agent
from common.weights_codec import decode_weights, encode_weights
from learner.weight_service import WeightPublisher


def weights(value: float) -> dict[str, torch.Tensor]:
    return {
        "layer.weight": torch.full((4, 3), value),
        "layer.bias": torch.arange(4, dtype=torch.float32),
        "steps": torch.tensor(7),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_codec_round_trips_without_pickle_and_rejects_garbage():
    message = decode_weights(encode_weights(weights(1.5), version=3, extra={"env_steps": 1234}))
    assert message.version == 3 and message.extra == {"env_steps": 1234}
    for name, tensor in weights(1.5).items():
        assert torch.equal(message.state_dict[name], tensor)
    payload = encode_weights(weights(1.5), version=3)
    with pytest.raises(ValueError, match="truncated"):
        decode_weights(payload[:-5])
    with pytest.raises(ValueError, match="not an OVMW message"):
        decode_weights(b"\x80\x04pickle")


def test_subscribers_get_every_newest_version_in_order():
    publisher = WeightPublisher(port=0)
    subs = [WeightSubscriber(publisher.address).start() for _ in range(3)]
    try:
        seen = [[] for _ in subs]
        for version in range(1, 6):
            publisher.publish(weights(float(version)), version)
            for sub, log in zip(subs, seen, strict=True):
                assert sub.wait_for_version(version, timeout=10)
                message = sub.take()
                if message is not None:
                    log.append(message.version)
        for log in seen:
            assert log == sorted(log) and log[-1] == 5
        assert subs[0].take() is None  # nothing newer than what was taken
        assert float(fetch_latest(publisher.address).state_dict["layer.weight"][0, 0]) == 5.0
    finally:
        for sub in subs:
            sub.stop()
        publisher.stop()


def test_versions_only_go_forward_and_messages_are_bounded():
    publisher = WeightPublisher(port=0, max_message_bytes=1024)
    try:
        assert fetch_latest(publisher.address) is None
        publisher.publish(weights(1.0), 2)
        with pytest.raises(ValueError, match="only go forward"):
            publisher.publish(weights(1.0), 2)
        with pytest.raises(ValueError, match="exceeds max_message_bytes=1024"):
            publisher.publish({"big": torch.zeros(1000)}, 3)
    finally:
        publisher.stop()


def test_the_service_sends_weights_up_to_its_bound_but_reads_only_small_requests():
    import grpc

    from common.weight_protocol import MAX_REQUEST_BYTES, SUBSCRIBE

    publisher = WeightPublisher(port=0, max_message_bytes=4 << 20)
    subscriber = WeightSubscriber(publisher.address, max_message_bytes=4 << 20).start()
    try:
        big = {"big": torch.arange(3 << 18, dtype=torch.float32)}  # 3 MiB: weights far above requests
        publisher.publish(big, 1)
        assert subscriber.wait_for_version(1, timeout=10)
        assert torch.equal(fetch_latest(publisher.address, 4 << 20).state_dict["big"], big["big"])
        with grpc.insecure_channel(publisher.address) as channel:
            stream = channel.unary_stream(SUBSCRIBE)(bytes(2 * MAX_REQUEST_BYTES), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                next(stream)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        subscriber.stop()
        publisher.stop()


def test_an_actor_keeps_playing_through_a_learner_restart_and_picks_up_the_new_version():
    port = free_port()
    env = LiteBatchEnv("3m", num_envs=2, seed=0)
    agent = make_agent(env.get_env_info())
    worker = RolloutWorker(env, agent, seed=0)
    publisher = WeightPublisher(port=port)
    subscriber = WeightSubscriber(f"127.0.0.1:{port}", min_backoff_s=0.05, max_backoff_s=0.2).start()
    try:
        publisher.publish(agent.state_dict(), 1)
        assert subscriber.wait_for_version(1, timeout=10)
        publisher.stop()  # the learner goes away...
        for _ in range(50):  # ...and the actor keeps acting
            message = subscriber.take()
            if message is not None:
                worker.set_weights(message.state_dict, message.version)
            worker.step(epsilon=0.5)
        assert worker.env_steps == 100
        restarted = WeightPublisher(port=port)  # the learner comes back with a newer version
        new_weights = {k: v + 0.01 for k, v in agent.state_dict().items()}
        restarted.publish(new_weights, 2)
        assert subscriber.wait_for_version(2, timeout=20)
        message = subscriber.take()
        assert message.version == 2 and worker.set_weights(message.state_dict, message.version)
        episodes = []
        while not any(ep.meta.policy_version == 2 for ep in episodes):
            episodes += worker.step(epsilon=0.5)
        assert subscriber.reconnects >= 1
        versions = [ep.meta.policy_version for ep in episodes]
        assert versions == sorted(versions)
        assert np.isfinite([ep.meta.episode_return for ep in episodes]).all()
        restarted.stop()
    finally:
        subscriber.stop()


class NothingToSample:
    def sample(self, timeout=None):
        time.sleep(timeout or 0)
        raise TimeoutError


def test_the_service_knows_which_versions_the_evaluator_has_been_handed():
    publisher = WeightPublisher(port=0)
    actor = WeightSubscriber(publisher.address).start()
    try:
        publisher.publish(weights(1.0), 1)
        assert actor.wait_for_version(1, timeout=10)
        assert not publisher.evaluator_seen and not publisher.evaluator_has(1)  # an actor is not it
        evaluator = WeightSubscriber(publisher.address, role="evaluator").start()
        assert evaluator.wait_for_version(1, timeout=10)
        publisher.publish(weights(2.0), 2)
        assert evaluator.wait_for_version(2, timeout=10)
        deadline = time.monotonic() + 5
        while not publisher.evaluator_has(2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.evaluator_seen and publisher.evaluator_has(2) and not publisher.evaluator_has(3)
        evaluator.stop()
    finally:
        actor.stop()
        publisher.stop()


def test_a_finished_learner_keeps_serving_until_an_evaluator_that_is_reconnecting_has_the_last_version():
    """A restarted learner can finish the run before the evaluator reconnects; it must not exit
    before the evaluator has the final version, or the final policy is never scored."""
    from actors.weight_client import ProgressReporter
    from learner.process import linger_until_run_ends

    publisher = WeightPublisher(port=0)
    publisher.expect_evaluator()  # what a restarted learner knows from the run directory
    publisher.publish(weights(3.0), 7, extra={"done": True})
    actor = ProgressReporter(publisher.address, 0)
    assert actor.report(500, 10, final=True)  # the actors have all finished
    actor.close()
    lingering = threading.Thread(
        target=linger_until_run_ends, args=(NothingToSample(), publisher, 7, threading.Event())
    )
    lingering.start()
    try:
        lingering.join(timeout=2.0)
        assert lingering.is_alive()  # no actors are left, but the evaluator has nothing yet
        evaluator = WeightSubscriber(publisher.address, role="evaluator").start()
        assert evaluator.wait_for_version(7, timeout=10)
        lingering.join(timeout=10)
        assert not lingering.is_alive() and evaluator.take().extra["done"]
        evaluator.stop()
    finally:
        publisher.stop()
        lingering.join()


def test_a_finished_learner_without_an_evaluator_does_not_wait_for_one():
    from actors.weight_client import ProgressReporter
    from learner.process import linger_until_run_ends

    publisher = WeightPublisher(port=0)
    try:
        publisher.publish(weights(3.0), 7, extra={"done": True})
        actor = ProgressReporter(publisher.address, 0)
        assert actor.report(500, 10, final=True)
        actor.close()
        began = time.monotonic()
        linger_until_run_ends(NothingToSample(), publisher, 7, threading.Event())
        assert time.monotonic() - began < 5  # FINAL_EVALUATOR_WAIT_S is 120
    finally:
        publisher.stop()


def test_actor_reports_add_up_and_a_restarted_actor_counts_as_a_new_session():
    from actors.weight_client import ProgressReporter

    publisher = WeightPublisher(port=0)
    try:
        a, b = ProgressReporter(publisher.address, 0), ProgressReporter(publisher.address, 1)
        assert a.report(100, 2) and b.report(50, 1) and a.report(300, 5)
        assert publisher.totals() == (350, 6)
        restarted = ProgressReporter(publisher.address, 0)  # actor 0 again, counting from zero
        assert restarted.report(10, 0)
        assert publisher.totals() == (360, 6) and publisher.actors_reporting() == {0, 1}
        assert not publisher.all_actors_finished()
        for reporter in (a, b, restarted):
            reporter.report(0, 0, final=True)
        assert publisher.all_actors_finished() and publisher.totals() == (360, 6)
        for r in (a, b, restarted):
            r.close()
    finally:
        publisher.stop()


def test_an_evaluator_that_connects_late_still_scores_the_starting_weights_at_step_zero(tmp_path):
    import threading

    from common.config import resolve_config
    from deploy.embedded import EmbeddedRun
    from deploy.roles import evaluator_role as run_evaluator

    publisher = WeightPublisher(port=0)
    cfg = resolve_config(
        map_name="3m",
        method="qmix",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=late",
            f"actor.weight_server={publisher.address}",
            "actor.test_episodes=4",
            "actor.final_test_episodes=0",
            "run.eval_interval_steps=1000",
        ],
    )
    start_weights = make_agent(LiteBatchEnv("3m", num_envs=1).get_env_info()).state_dict()
    later_weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in start_weights.items()}
    stop = threading.Event()
    try:
        # Training has moved on before the evaluator exists: it only ever sees version 2 streamed.
        publisher.publish(start_weights, 1, extra={"env_steps": 0, "start": True}, start=True)
        publisher.publish(later_weights, 2, extra={"env_steps": 1500})
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(run_evaluator(cfg, stop)))
        thread.start()
        evals = []
        for _ in range(600):
            evals = EmbeddedRun(cfg, tmp_path / "late").evals()
            if len(evals) >= 2:
                break
            stop.wait(0.1)
        stop.set()
        thread.join(timeout=60)
        assert [(e["env_steps"], e["policy_version"]) for e in evals[:2]] == [(0, 1), (1500, 2)]
        assert result["first_win_rate"] == evals[0]["win_rate"]

        # A restarted evaluator carries on from what is logged: no second step-0 evaluation.
        stop.clear()
        publisher.publish(later_weights, 3, extra={"env_steps": 2500, "done": True})
        result = run_evaluator(cfg, stop)
        evals = EmbeddedRun(cfg, tmp_path / "late").evals()
        assert [(e["env_steps"], e["policy_version"]) for e in evals] == [(0, 1), (1500, 2), (2500, 3)]
        assert result["first_win_rate"] == evals[0]["win_rate"]
    finally:
        stop.set()
        publisher.stop()
