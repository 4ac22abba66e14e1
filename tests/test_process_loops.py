"""The actor and learner process loops with their parts replaced by in-memory fakes: the actor's
epsilon follows the run's global step count, and a restarted learner resumes its own checkpoint."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from actors.process import ActorParts, run_actor
from actors.rollout import RolloutWorker
from common.config.sections import ActorConfig, Config
from common.metrics import Metrics
from common.networks import agent_network
from common.weights_codec import WeightsMessage
from tests.fakes.scripted_battles import ScriptedBattles

# --- the actor process -------------------------------------------------------------------------


class ScheduledSubscriber:
    """Hands the actor `messages[k]` when it asks after its k-th step (the weight stream, faked)."""

    def __init__(self, worker: RolloutWorker, messages: dict[int, WeightsMessage]):
        self.worker, self.messages, self.version, self.latencies_s = worker, dict(messages), -1, []

    def start(self):
        return self

    def take(self):
        message = self.messages.pop(len(getattr(self.worker, "epsilons", [])), None)
        if message is not None:
            self.version = message.version
        return message

    def stop(self):
        pass


class Nowhere:
    """Reporter and episode sink that keep what they are given."""

    def __init__(self):
        self.reports, self.episodes = [], []

    def report(self, env_steps, episodes, final=False):
        self.reports.append((env_steps, episodes, final))

    def write(self, episode):
        self.episodes.append(episode)

    def close(self):
        pass


class RecordingWorker(RolloutWorker):
    """A rollout worker that remembers the epsilon of every step and stops the actor after `steps`."""

    def __init__(self, *args, steps: int, stop: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilons: list[float] = []
        self._steps, self._stop = steps, stop

    def step(self, epsilon):
        self.epsilons.append(epsilon)
        if len(self.epsilons) >= self._steps:
            self._stop.set()
        return super().step(epsilon)


def weights(worker, version: int, env_steps: int) -> WeightsMessage:
    state = worker._agents[worker.newest_version].state_dict()
    return WeightsMessage(version, state, published_at=0.0, extra={"env_steps": env_steps})


def test_the_actors_epsilon_follows_the_global_step_count_from_each_weight_message():
    # epsilon_t = max(0.1, 1 - 0.9 t / 1000), t = the learner's count in the newest weight message
    # plus the steps this actor played since it arrived (4 battles: 4 env steps per step).
    cfg = dataclasses.replace(
        Config(), actor=ActorConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_anneal_steps=1000)
    )
    stop = threading.Event()
    env = ScriptedBattles(num_envs=4, seed=0, win_steps=7, loss_steps=3)
    worker = RecordingWorker(env, agent_network(env.get_env_info()), version=-1, steps=12, stop=stop)
    messages = {0: weights(worker, 1, env_steps=200), 6: weights(worker, 2, env_steps=990)}
    sink = Nowhere()
    parts = ActorParts(worker, ScheduledSubscriber(worker, messages), sink, sink, Metrics("actor"))
    result = run_actor(cfg, actor_id=0, parts=parts, stop=stop)

    def epsilon(t):
        return max(0.1, 1.0 - 0.9 * t / 1000)

    expected = [epsilon(200 + 4 * k) for k in range(6)] + [epsilon(990 + 4 * k) for k in range(6)]
    assert worker.epsilons == pytest.approx(expected)
    assert expected[-1] == 0.1 and expected[0] == pytest.approx(0.82)  # annealed to its floor
    assert result["env_steps"] == 48 and sink.reports[-1] == (48, result["episodes"], True)
    assert len(sink.episodes) == result["episodes"] > 0


def test_the_actor_plays_nothing_before_its_first_weights():
    cfg = Config()
    stop = threading.Event()
    env = ScriptedBattles(num_envs=2, seed=0)
    worker = RecordingWorker(env, agent_network(env.get_env_info()), version=-1, steps=1, stop=stop)
    sink = Nowhere()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    result = run_actor(cfg, 0, ActorParts(worker, ScheduledSubscriber(worker, {}), sink, sink,
                                          Metrics("actor")), stop)
    timer.cancel()
    assert worker.epsilons == [] and result["env_steps"] == 0 and sink.episodes == []
