"""The actor process of a distributed run (`ovmse actor`).

It plays `actor.envs_per_actor` battles with the newest weights it has received, explores as the
preset says (decentralized SE for OVMSE), writes every finished episode to the online table, and
reports its running totals to the learner. Epsilon follows the global environment-step count: the
learner's count in the newest weight message plus this actor's steps since.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from actors.rollout import RolloutWorker
from actors.weight_client import ProgressReporter, WeightSubscriber
from common.config.sections import Config
from common.episode import Episode
from common.metrics import Metrics
from common.schedules import epsilon_at

REPORT_INTERVAL_S = 0.5


class EpisodeSink(Protocol):
    """Where finished episodes go (the replay server's episode writer)."""

    def write(self, episode: Episode) -> None: ...

    def close(self) -> None: ...


@dataclass
class ActorParts:
    """What the actor process runs, built by the caller (deploy/builder.py)."""

    worker: RolloutWorker
    subscriber: WeightSubscriber
    reporter: ProgressReporter
    writer: EpisodeSink
    metrics: Metrics


def resolve_actor_id(explicit: int | None) -> int:
    """--actor-id, else $OVMSE_ACTOR_ID, else a stable number from the host name (so replicas of a
    scaled compose service differ)."""
    if explicit is not None:
        return explicit
    if os.environ.get("OVMSE_ACTOR_ID"):
        return int(os.environ["OVMSE_ACTOR_ID"])
    return zlib.crc32(socket.gethostname().encode()) % 100_000


def run_actor(cfg: Config, actor_id: int, parts: ActorParts, stop: threading.Event) -> dict:
    label = str(actor_id)
    worker, subscriber, reporter, writer, metrics = (
        parts.worker,
        parts.subscriber.start(),
        parts.reporter,
        parts.writer,
        parts.metrics,
    )
    env = worker.env
    recent: deque = deque(maxlen=100)
    learner_steps, steps_at_message, done = 0, 0, False
    next_report = 0.0
    try:
        while not stop.is_set() and not done:
            message = subscriber.take()
            if message is not None:
                worker.set_weights(message.state_dict, message.version)
                learner_steps = int(message.extra.get("env_steps", 0))
                steps_at_message = worker.env_steps
                done = bool(message.extra.get("done"))
                metrics.policy_version.labels(role="actor").set(message.version)
                for latency in list(subscriber.latencies_s)[-1:]:
                    metrics.broadcast_seconds.observe(latency)
            if worker.newest_version < 0:  # no weights yet: nothing sensible to play
                stop.wait(0.05)
                continue
            global_steps = learner_steps + worker.env_steps - steps_at_message
            epsilon = epsilon_at(cfg.actor, global_steps)
            finished = worker.step(epsilon)
            for episode in finished:
                writer.write(episode)
                recent.append(episode)
                metrics.policy_lag.labels(actor=label).set(subscriber.version - episode.meta.policy_version)
            metrics.env_steps.labels(actor=label).inc(env.num_envs)
            metrics.episodes.labels(actor=label).inc(len(finished))
            metrics.epsilon.labels(actor=label).set(epsilon)
            if finished:
                metrics.train_win_rate.set(sum(e.meta.battle_won for e in recent) / len(recent))
                metrics.train_return.set(sum(e.meta.episode_return for e in recent) / len(recent))
            if time.monotonic() >= next_report:
                reporter.report(worker.env_steps, worker.episodes)
                next_report = time.monotonic() + REPORT_INTERVAL_S
        reporter.report(worker.env_steps, worker.episodes, final=True)
        return {"actor": actor_id, "env_steps": worker.env_steps, "episodes": worker.episodes}
    finally:
        writer.close()
        reporter.close()
        subscriber.stop()
        metrics.close()
