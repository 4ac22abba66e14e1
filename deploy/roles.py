"""The processes of a distributed run, each made by the builder from the config and run until it is
done or `stop` is set. `ovmse replay-server | learner | actor | evaluate` run these, and so do the
embedded orchestrator's children, the docker compose services and the Ray components.
"""

from __future__ import annotations

import threading

from common.config.sections import Config
from common.run_log import RunLog
from common.weight_protocol import EVALUATOR_ROLE
from deploy.builder import Builder


def serve_replay_role(cfg: Config, stop: threading.Event, server=None) -> None:
    """The replay server (started here unless given) until `stop`."""
    from replay.process import serve_replay

    builder = Builder(cfg)
    serve_replay(cfg, stop, server or builder.replay_server(progress=True), builder.metrics("replay"))


def learner_role(cfg: Config, stop: threading.Event) -> dict:
    from learner.process import LearnerParts, run_learner
    from replay.server import wait_for_offline_table

    builder = Builder(cfg)
    log = RunLog(cfg.run.path, process="learner")
    if not (cfg.run.path / "config.yaml").exists():
        log.write_config(cfg)

    metrics = builder.metrics("learner")

    def dropped(table: str, reason: str) -> None:  # a bad replay item, kept out of training
        metrics.replay_items_dropped.labels(table=table, reason=reason).inc()

    def offline_batches():
        # Sampling a half-loaded offline table would bias the first batches.
        wait_for_offline_table(cfg.replay.endpoint, cfg.run.dataset, stop)
        return builder.offline_sampler(on_drop=dropped)

    learner = builder.learner()
    parts = LearnerParts(
        learner=learner,
        publisher=builder.weight_publisher(),
        offline_batches=offline_batches,
        online_batches=lambda: builder.sampler(on_drop=dropped),
        metrics=metrics,
        log=log,
        evaluate_offline=builder.offline_curve(learner, log),
    )
    return run_learner(cfg, parts, stop)


def acting_threads() -> None:
    """For an actor or evaluator process: acting is one small forward pass per step, so one torch
    thread, and several actors (and the learner) on one machine do not fight over its cores."""
    import torch

    torch.set_num_threads(1)


def actor_role(cfg: Config, actor_id: int, stop: threading.Event) -> dict:
    from actors.process import ActorParts, run_actor

    builder = Builder(cfg)
    parts = ActorParts(
        worker=builder.actor_worker(actor_id),
        subscriber=builder.weight_subscriber(),
        reporter=builder.progress_reporter(actor_id),
        writer=builder.episode_writer(),
        metrics=builder.metrics("actor"),
    )
    return run_actor(cfg, actor_id, parts, stop)


def evaluator_role(cfg: Config, stop: threading.Event) -> dict:
    from actors.eval_process import EvaluatorParts, run_evaluator

    builder = Builder(cfg)
    parts = EvaluatorParts(
        worker=builder.eval_worker(),
        subscriber=builder.weight_subscriber(role=EVALUATOR_ROLE),
        metrics=builder.metrics("evaluator"),
        log=RunLog(cfg.run.path, process="evaluator"),
    )
    return run_evaluator(cfg, parts, stop)
