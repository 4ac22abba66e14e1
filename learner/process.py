"""The learner process of a distributed run (`ovmse learner`).

It samples mixed batches from the replay server, takes gradient steps, and publishes weights to
actors and the evaluator over gRPC. The global environment-step count (the run's clock: epsilon, the
memory coefficient, the budget) is the sum of the actors' reports. The replay server's rate limiter
holds the learner to `samples_per_insert`, so it does as many updates per collected episode as the
synchronous trainer.

Order of events: resume from checkpoints/learner.pt if present; else start from run.init_checkpoint;
else pre-train offline on the offline table. Then publish version 1 and train online until the
actors have played run.online_env_steps; publish a last version marked done, checkpoint, keep
serving until the actors have finished and the evaluator has the last version, and exit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.config.sections import Config
from common.episode_checks import DROP_REASONS
from common.metrics import Metrics
from common.run_log import RunLog
from learner.checkpoint import NonFiniteWeights, first_nonfinite, save_checkpoint
from learner.interface import Learner
from learner.training import BatchSource, OnlineUpdates, learner_checkpoint, start_point
from learner.weight_service import WeightPublisher

log = logging.getLogger(__name__)
PROGRESS_FILE = "learner_progress.json"
PUBLISHED_FILE = "published_version"
EVALUATOR_FILE = "evaluator_subscribed"  # the run has an evaluator: a restarted learner waits for it
FINAL_LINGER_S = 20.0  # at most this long after `done` waiting for actors to finish
# ... and for the evaluator to take the last version: longer, as it may be restarting (the
# orchestrator's restart delay plus its start-up) or reconnecting to a restarted learner.
FINAL_EVALUATOR_WAIT_S = 120.0


def write_progress(run_dir: Path, **fields) -> None:
    """learner_progress.json: what the orchestrator's status line shows (atomic replace)."""
    path = run_dir / PROGRESS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": time.time(), **fields}))
    os.replace(tmp, path)


def record_published_version(run_dir: Path, version: int) -> None:
    """Remember the newest version handed to actors: a learner restarted from an older checkpoint
    must publish above it, or actors would keep the newer weights and ignore the resumed ones."""
    path = run_dir / PUBLISHED_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(version))
    os.replace(tmp, path)


def last_published_version(run_dir: Path) -> int:
    try:
        return int((run_dir / PUBLISHED_FILE).read_text())
    except (OSError, ValueError):
        return 0


def linger_until_run_ends(
    sampler, publisher: WeightPublisher, final_version: int, stop: threading.Event
) -> None:
    """After `done`: keep sampling (and discarding) so the online table's rate limiter lets actors'
    last inserts through, and keep serving the final version, until every actor has said it is
    finished (otherwise an actor blocked in an insert would never see `done`) and, if the run has an
    evaluator, until it has been handed the final version (otherwise it would never score the final
    policy, and the run would wait for that score)."""
    began = time.monotonic()
    while not stop.is_set():
        waited = time.monotonic() - began
        actors_done = publisher.all_actors_finished() or waited >= FINAL_LINGER_S
        evaluator_done = (
            not publisher.evaluator_seen
            or publisher.evaluator_has(final_version)
            or waited >= FINAL_EVALUATOR_WAIT_S
        )
        if actors_done and evaluator_done:
            return
        if actors_done:  # nothing left to insert: only waiting for the evaluator
            stop.wait(0.1)
            continue
        try:
            sampler.sample(timeout=0.2)
        except TimeoutError:
            pass


def note_evaluator(run_dir: Path, publisher: WeightPublisher) -> bool:
    """Record in the run directory that the run has an evaluator (once one has subscribed), so a
    restarted learner waits for it at the end even before it reconnects; True once recorded."""
    if not publisher.evaluator_seen:
        return False
    (run_dir / EVALUATOR_FILE).touch()
    return True


class DropLog:
    """Replay items the learner's sampler dropped (not trained on, deleted from their table), by
    reason: a "dropped" record in the run log (metrics.jsonl, dropped.csv) whenever the counts
    have changed, with every reason of `common.episode_checks.DROP_REASONS` as a column."""

    def __init__(self, runlog: RunLog):
        self.runlog = runlog
        self.last: dict[str, int] = {}

    def update(self, sampler, env_steps: int, episodes: int, updates: int) -> dict[str, int]:
        """The counts so far (logged if they changed since the last call)."""
        stats = getattr(sampler, "stats", None)
        # dict() copies in one step, safe against the prefetch thread adding a reason meanwhile.
        counts = {str(k): int(v) for k, v in dict(getattr(stats, "dropped", None) or {}).items()}
        if counts != self.last:
            self.last = counts
            self.runlog.log(
                "dropped",
                env_steps=env_steps,
                episodes=episodes,
                updates=updates,
                total=sum(counts.values()),
                **{reason: counts.get(reason, 0) for reason in DROP_REASONS},
            )
        return counts


@dataclass
class LearnerParts:
    """What the learner process runs, built by the caller (deploy/builder.py).

    offline_batches: offline-only batches for pre-training, made only if pre-training happens
    (waiting for the offline table first). online_batches: mixed batches, made once online."""

    learner: Learner
    publisher: WeightPublisher
    offline_batches: Callable[[], BatchSource]
    online_batches: Callable[[], BatchSource]
    metrics: Metrics
    log: RunLog
    evaluate_offline: Callable[[int], None] | None = None  # the offline curve: score after N updates


def run_learner(cfg: Config, parts: LearnerParts, stop: threading.Event) -> dict:
    run_dir = cfg.run.path
    learner, publisher, metrics, runlog = parts.learner, parts.publisher, parts.metrics, parts.log
    checkpoint = learner_checkpoint(run_dir)
    sampler = None
    try:
        start = start_point(
            learner, cfg, run_dir, parts.offline_batches, runlog, evaluate=parts.evaluate_offline
        )
        if start.pretrained:
            runlog.plot_offline_curve()
        version = start.version
        if start.resumed:
            # The run's step count goes on (epsilon, the memory coefficient and the budget follow it),
            # and versions go on above any published after the checkpoint: actors never go back.
            publisher.restore_sessions(
                start.actor_sessions or [[-1, "checkpoint", start.env_steps, start.episodes, True]]
            )
            version = max(version, last_published_version(run_dir))
            steps = start.env_steps
            print(f"learner: resumed at {steps:,} env steps; next version {version + 1}", flush=True)
        if (run_dir / EVALUATOR_FILE).exists():  # restarted: the evaluator may not have reconnected
            publisher.expect_evaluator()
        updates: OnlineUpdates | None = None

        def publish(done: bool = False, first: bool = False) -> None:
            nonlocal version
            version += 1
            env_steps, episodes = publisher.totals()
            extra = {"env_steps": env_steps, "episodes": episodes, "updates": learner.updates, "done": done}
            if updates is not None:  # what the evaluator logs beside its policy agreement
                extra["ovm_active_fraction"] = updates.last_metrics.get("ovm_active_fraction", 0.0)
            if first:
                extra["start"] = True
            weights = learner.agent_state_dict()
            bad = first_nonfinite(weights)
            if bad is not None:  # never send actors weights that are not numbers; stop the run
                metrics.nonfinite_weights_refused.labels(what="publish").inc()
                log.error("not publishing version %d: %s holds NaN or infinity; stopping", version, bad)
                raise NonFiniteWeights(f"weights went non-finite ({bad}); not published, run stopped")
            began = time.perf_counter()
            publisher.publish(weights, version, extra=extra, start=first)
            record_published_version(run_dir, version)
            metrics.broadcast_seconds.observe(time.perf_counter() - began)
            metrics.policy_version.labels(role="learner").set(version)

        def save() -> None:
            env_steps, episodes = publisher.totals()
            if first_nonfinite(learner.state_dict()) is not None:
                metrics.nonfinite_weights_refused.labels(what="checkpoint").inc()
            save_checkpoint(  # raises NonFiniteWeights rather than overwrite the last good one
                learner,
                checkpoint,
                extra={
                    "version": version,
                    "offline_credit": start.offline_credit,
                    "env_steps": env_steps,
                    "episodes": episodes,
                    "actor_sessions": publisher.sessions(),
                },
                map_name=cfg.env.map_name,
            )

        # The weights online training starts from; a resumed learner is mid-run and has none.
        publish(first=not start.resumed)
        sampler = parts.online_batches()
        # A batch whose update goes non-finite: its episodes to blame are deleted from the replay.
        discard = getattr(sampler, "discard", None)
        updates = OnlineUpdates(learner, cfg, start, publish, runlog, save, discard=discard)
        budget = cfg.run.online_env_steps
        drops = DropLog(runlog)
        next_progress = 0.0
        evaluator_noted = (run_dir / EVALUATOR_FILE).exists()
        while not stop.is_set():
            env_steps, episodes = publisher.totals()
            if env_steps >= budget:
                break
            if time.monotonic() >= next_progress:
                write_progress(
                    run_dir,
                    env_steps=env_steps,
                    episodes=episodes,
                    updates=learner.updates,
                    updates_per_s=updates.updates_per_s,
                    version=version,
                    budget=budget,
                    actors=sorted(publisher.actors_reporting()),
                    dropped=drops.update(sampler, env_steps, episodes, learner.updates),
                )
                next_progress = time.monotonic() + 1.0
                evaluator_noted = evaluator_noted or note_evaluator(run_dir, publisher)
            wait_start = time.perf_counter()
            try:
                batch = sampler.sample(timeout=0.5)
            except TimeoutError:
                continue
            metrics.batch_wait_seconds.observe(time.perf_counter() - wait_start)
            result = updates.step(batch, env_steps, episodes)
            if result["update_skipped"]:  # a non-finite loss or gradient: nothing was changed
                metrics.learner_updates_skipped.inc()
                continue
            metrics.learner_updates.inc()
            for part in ("td", "ovm", "cql", "total"):
                metrics.learner_loss.labels(part=part).set(result[f"loss_{part}"])
            metrics.q_tot_mean.set(result["q_tot_mean"])
            metrics.ovm_active_fraction.set(result["ovm_active_fraction"])
            metrics.memory_coefficient.set(result["memory_coefficient"])
        finished = publisher.totals()[0] >= budget
        publish(done=finished)
        save()
        env_steps, episodes = publisher.totals()
        write_progress(
            run_dir,
            env_steps=env_steps,
            episodes=episodes,
            updates=learner.updates,
            updates_per_s=0.0,
            version=version,
            budget=budget,
            done=finished,
            actors=sorted(publisher.actors_reporting()),
            dropped=drops.update(sampler, env_steps, episodes, learner.updates),
        )
        if finished:
            linger_until_run_ends(sampler, publisher, version, stop)
        return {"updates": learner.updates, "version": version, "env_steps": env_steps, "finished": finished}
    finally:
        if sampler is not None:
            sampler.close()
        publisher.stop()
        metrics.close()
        runlog.close()
