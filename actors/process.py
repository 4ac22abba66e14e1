"""The actor process of a distributed run (`ovmse actor`).

It plays `actor.envs_per_actor` battles with the newest weights it has received, explores as the
preset says (decentralized SE for OVMSE), writes every finished episode to the online table, and
reports its running totals to the learner. Epsilon follows the global environment-step count: the
learner's count in the newest weight message plus this actor's steps since.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import zlib
from collections import deque

from actors.rollout import RolloutWorker, make_agent
from actors.weight_client import ProgressReporter, WeightSubscriber
from common.config.sections import Config
from common.envs.factory import make_batch_env
from common.metrics import Metrics
from common.schedules import epsilon_at

REPORT_INTERVAL_S = 0.5
ACTOR_SEED_STRIDE = 1000  # actor i plays battles seeded env.seed + 1000 i + b


def resolve_actor_id(explicit: int | None) -> int:
    """--actor-id, else $OVMSE_ACTOR_ID, else a stable number from the host name (so replicas of a
    scaled compose service differ)."""
    if explicit is not None:
        return explicit
    if os.environ.get("OVMSE_ACTOR_ID"):
        return int(os.environ["OVMSE_ACTOR_ID"])
    return zlib.crc32(socket.gethostname().encode()) % 100_000


def run_actor(cfg: Config, actor_id: int, stop: threading.Event) -> dict:
    from replay.writer import EpisodeWriter

    label = str(actor_id)
    metrics = Metrics("actor")
    if cfg.run.metrics_port:
        metrics.serve(cfg.run.metrics_port, cfg.run.bind_address)
    env_cfg = dataclasses.replace(cfg.env, seed=cfg.env.seed + ACTOR_SEED_STRIDE * actor_id)
    env = make_batch_env(env_cfg, cfg.actor.envs_per_actor)
    agent = make_agent(env.get_env_info(), cfg.learner.rnn_hidden_dim)
    worker = RolloutWorker(
        env,
        agent,
        exploration=cfg.actor.exploration,
        seed=cfg.run.seed + actor_id,
        actor_id=actor_id,
        version=-1,
    )
    max_bytes = cfg.run.grpc_max_message_mb << 20
    subscriber = WeightSubscriber(cfg.actor.weight_server, max_message_bytes=max_bytes).start()
    reporter = ProgressReporter(cfg.actor.weight_server, actor_id)
    writer = EpisodeWriter(f"{cfg.replay.address}:{cfg.replay.port}")
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
