"""The actor and learner process loops with their parts replaced by in-memory fakes: the actor's
epsilon follows the run's global step count, and a restarted learner resumes its own checkpoint."""

from __future__ import annotations

import dataclasses
import threading

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
    result = run_actor(
        cfg, 0, ActorParts(worker, ScheduledSubscriber(worker, {}), sink, sink, Metrics("actor")), stop
    )
    timer.cancel()
    assert worker.epsilons == [] and result["env_steps"] == 0 and sink.episodes == []


# --- the learner process -----------------------------------------------------------------------


class FakeActors:
    """The weight service and the actors behind it: every batch the learner takes stands for 100
    environment steps and 10 episodes reported by the actors."""

    def __init__(self, env_steps: int = 0):
        self.env_steps, self.episodes = env_steps, env_steps // 10
        self.published: list[tuple[int, dict, dict, bool]] = []  # (version, weights, extra, start)

    def publish(self, state_dict, version, extra=None, start=False):
        assert not self.published or version > self.published[-1][0]
        self.published.append((version, {k: v.clone() for k, v in state_dict.items()}, dict(extra), start))

    def totals(self):
        return self.env_steps, self.episodes

    def sessions(self):
        return [[0, "one session", self.env_steps, self.episodes, False]]

    def restore_sessions(self, rows):
        """A restarted learner's totals from its checkpoint; the one actor lived on (same session)."""
        self.restored = [list(row) for row in rows]
        self.env_steps = max(self.env_steps, sum(row[2] for row in rows))
        self.episodes = max(self.episodes, sum(row[3] for row in rows))

    def actors_reporting(self):
        return {0}

    def all_actors_finished(self):
        return True

    evaluator_seen = False  # an evaluator has subscribed (or the learner was told to expect one)

    def expect_evaluator(self):
        self.evaluator_seen = True

    def evaluator_has(self, version):
        return self.evaluator_seen  # an evaluator that is there has taken every version

    def stop(self):
        pass


class OnlineBatches:
    def __init__(self, actors: FakeActors):
        self.actors, self.served = actors, 0

    def sample(self, timeout=None):
        from tests.test_learner_update import random_batch

        self.actors.env_steps += 100
        self.actors.episodes += 10
        self.served += 1
        return random_batch(100 + self.served)

    def close(self):
        pass


def learner_run(tmp_path, actors: FakeActors, budget: int, offline_batches, seed: int):
    from common.run_log import RunLog
    from learner.process import LearnerParts, run_learner
    from learner.qmix_learner import QMixLearner
    from tests.test_learner_update import INFO
    from tests.test_learner_update import config as learner_config

    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        learner=learner_config(
            offline_cql="none", offline_updates=3, batch_size_run=4, target_update_interval=1000
        ),
        run=dataclasses.replace(
            cfg.run,
            run_dir=str(tmp_path),
            name="resume",
            dataset=str(tmp_path / "data.h5"),
            online_env_steps=budget,
        ),
    )
    learner = QMixLearner(INFO, cfg.learner, seed=seed)
    online = OnlineBatches(actors)
    parts = LearnerParts(
        learner, actors, offline_batches, lambda: online, Metrics("learner"), RunLog(cfg.run.path)
    )
    return run_learner(cfg, parts, threading.Event()), learner, cfg


class OfflineBatches:
    def __init__(self):
        self.served = 0

    def sample(self, timeout=None):
        from tests.test_learner_update import random_batch

        self.served += 1
        return random_batch(self.served)

    def close(self):
        pass


def test_a_restarted_learner_resumes_its_checkpoint_without_pre_training_again(tmp_path):
    from learner.checkpoint import load_checkpoint
    from learner.training import learner_checkpoint

    offline = OfflineBatches()
    first_actors = FakeActors()
    first, learner, cfg = learner_run(tmp_path, first_actors, 500, lambda: offline, seed=0)
    assert offline.served == 3 and first["finished"]  # pre-trained once: 3 offline updates
    assert first_actors.published[0][0] == 1 and first_actors.published[0][3]  # the start weights
    saved = load_checkpoint(learner, learner_checkpoint(cfg.run.path))
    assert saved["version"] == first["version"] and saved["offline_credit"] == 3 * 4

    def no_second_pre_training():
        raise AssertionError("a resumed learner must not pre-train again")

    # Restarted mid-run (another seed: every number must come from the checkpoint).
    actors = FakeActors(env_steps=first["env_steps"])
    second, resumed, _ = learner_run(tmp_path, actors, 900, no_second_pre_training, seed=7)
    version, weights, extra, start = actors.published[0]
    assert version == first["version"] + 1 and not start  # versions go on; not new start weights
    assert actors.restored == [[0, "one session", first["env_steps"], first["env_steps"] // 10, False]]
    last_weights = first_actors.published[-1][1]
    assert all(torch.equal(weights[k], last_weights[k]) for k in last_weights)
    assert extra["updates"] == first["updates"]
    assert second["updates"] == first["updates"] + 4  # 4 more batches of 100 steps to reach 900
    again = load_checkpoint(resumed, learner_checkpoint(cfg.run.path))
    assert again["offline_credit"] == 3 * 4 and again["version"] == second["version"]


def test_a_restarted_learner_waits_for_the_runs_evaluator_even_before_it_reconnects(tmp_path):
    offline = OfflineBatches()
    first_actors = FakeActors()
    first_actors.evaluator_seen = True  # the run's evaluator subscribed to the first learner
    learner_run(tmp_path, first_actors, 500, lambda: offline, seed=0)
    restarted = FakeActors(env_steps=500)  # a new weight service: no evaluator connected yet
    learner_run(tmp_path, restarted, 900, lambda: offline, seed=0)
    assert restarted.evaluator_seen  # told by the run directory to wait for it at the end

    other_run = FakeActors()  # a run without an evaluator expects none
    learner_run(tmp_path / "other", other_run, 500, lambda: OfflineBatches(), seed=0)
    assert not other_run.evaluator_seen
