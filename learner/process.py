"""The learner process of a distributed run (`ovmse learner`).

It samples mixed batches from the replay server, takes gradient steps, and publishes weights to
actors and the evaluator over gRPC. The global environment-step count (the run's clock: epsilon, the
memory coefficient, the budget) is the sum of the actors' reports. The replay server's rate limiter
holds the learner to `samples_per_insert`, so it does as many updates per collected episode as the
synchronous trainer.

Order of events: resume from checkpoints/learner.pt if present; else start from run.init_checkpoint;
else pre-train offline on the offline table. Then publish version 1 and train online until the
actors have played run.online_env_steps; publish a last version marked done, checkpoint, and exit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from common.config.sections import Config
from common.envs.factory import make_env
from common.metrics import Metrics
from common.run_log import RunLog
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.learning import QMixLearner
from learner.sync_trainer import has_offline_phase, run_offline_phase
from learner.weight_service import WeightPublisher

log = logging.getLogger(__name__)
PROGRESS_FILE = "learner_progress.json"
LOG_EVERY_UPDATES = 20
FINAL_LINGER_S = 20.0  # at most this long after `done` waiting for actors to finish


def run_path(cfg: Config) -> Path:
    return Path(cfg.run.run_dir) / cfg.run.name


def weight_port(cfg: Config) -> int:
    try:
        return int(cfg.actor.weight_server.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"actor.weight_server: expected host:port, got {cfg.actor.weight_server!r}"
        ) from None


def write_progress(run_dir: Path, **fields) -> None:
    """learner_progress.json: what the orchestrator's status line shows (atomic replace)."""
    path = run_dir / PROGRESS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": time.time(), **fields}))
    os.replace(tmp, path)


def wait_for_offline_table(address: str, dataset: str | None, stop: threading.Event, timeout_s: float = 600):
    """Block until the replay server holds the whole dataset in its offline table: sampling a
    half-loaded table would bias the first offline batches."""
    from replay.dataset import dataset_layout
    from replay.server import OFFLINE_TABLE, import_reverb, table_stats

    expected = dataset_layout(dataset).episodes if dataset and Path(dataset).exists() else None
    client = import_reverb().Client(address)
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            size = table_stats(client)[OFFLINE_TABLE].size
        except Exception:  # the server is not up yet
            size = -1
        if expected is not None and size >= expected:
            return
        if expected is None and size > 0 and size == last and time.monotonic() - stable_since > 2.0:
            return
        if size != last:
            last, stable_since = size, time.monotonic()
        time.sleep(0.2)
    if not stop.is_set():
        raise TimeoutError(f"replay server {address}: offline table not loaded within {timeout_s:.0f}s")


def drain_until_actors_finish(sampler, publisher: WeightPublisher, stop: threading.Event) -> None:
    """After `done`: keep sampling (and discarding) so the online table's rate limiter lets actors'
    last inserts through, and keep serving the final version, until every actor has said it is
    finished. Otherwise an actor blocked in an insert would never see `done`."""
    deadline = time.monotonic() + FINAL_LINGER_S
    while not stop.is_set() and time.monotonic() < deadline and not publisher.all_actors_finished():
        try:
            sampler.sample(timeout=0.2)
        except TimeoutError:
            pass


def run_learner(cfg: Config, stop: threading.Event) -> dict:
    from replay.sampler import MixedSampler

    run_dir = run_path(cfg)
    runlog = RunLog(run_dir)
    if not (run_dir / "config.yaml").exists():
        runlog.write_config(cfg)
    metrics = Metrics("learner")
    if cfg.run.metrics_port:
        metrics.serve(cfg.run.metrics_port, cfg.run.bind_address)
    replay_address = f"{cfg.replay.address}:{cfg.replay.port}"
    max_bytes = cfg.run.grpc_max_message_mb << 20
    learner = QMixLearner(make_env(cfg.env).get_env_info(), cfg.learner, seed=cfg.run.seed)
    publisher = WeightPublisher(cfg.run.bind_address, weight_port(cfg), max_message_bytes=max_bytes)
    checkpoint = run_dir / "checkpoints" / "learner.pt"
    version = 0
    offline_credit = 0  # episodes credited to offline updates (the target-copy clock)
    sampler = None
    resumed = checkpoint.exists()
    try:
        if resumed:
            extra = load_checkpoint(learner, checkpoint)
            version, offline_credit = int(extra.get("version", 0)), int(extra.get("offline_credit", 0))
            print(
                f"learner: resumed from {checkpoint} (version {version}, {learner.updates} updates)",
                flush=True,
            )
        elif cfg.run.init_checkpoint:
            load_checkpoint(learner, cfg.run.init_checkpoint)
            offline_credit = learner.updates * cfg.learner.batch_size_run
        elif has_offline_phase(cfg):
            wait_for_offline_table(replay_address, cfg.run.dataset, stop)
            print(f"learner: offline phase, {cfg.learner.offline_updates} updates", flush=True)
            offline = MixedSampler.from_config(cfg, replay_address, mixing_ratio=1.0)
            try:
                run_offline_phase(cfg, learner, offline, runlog, progress=True)
            finally:
                offline.close()
            offline_credit = learner.updates * cfg.learner.batch_size_run
            save_checkpoint(learner, run_dir / "checkpoints" / "offline.pt", extra={"phase": "offline"})
        if cfg.learner.use_offline_value_memory and learner.offline_agent is None:
            learner.freeze_offline_memory()

        def publish(done: bool = False, start: bool = False) -> None:
            nonlocal version
            version += 1
            env_steps, episodes = publisher.totals()
            extra = {"env_steps": env_steps, "episodes": episodes, "updates": learner.updates, "done": done}
            if start:
                extra["start"] = True
            began = time.perf_counter()
            publisher.publish(learner.agent_state_dict(), version, extra=extra, start=start)
            metrics.broadcast_seconds.observe(time.perf_counter() - began)
            metrics.policy_version.labels(role="learner").set(version)

        def save() -> None:
            env_steps, episodes = publisher.totals()
            save_checkpoint(
                learner,
                checkpoint,
                extra={
                    "version": version,
                    "offline_credit": offline_credit,
                    "env_steps": env_steps,
                    "episodes": episodes,
                },
            )

        # The weights online training starts from; a resumed learner is mid-run and has none.
        publish(start=not resumed)
        budget = cfg.run.online_env_steps
        sampler = MixedSampler.from_config(cfg, replay_address)
        update_times: list[float] = []
        next_progress = 0.0
        while not stop.is_set():
            env_steps, episodes = publisher.totals()
            if env_steps >= budget:
                break
            if time.monotonic() >= next_progress:
                rate = len(update_times) / max(sum(update_times), 1e-9) if update_times else 0.0
                write_progress(
                    run_dir,
                    env_steps=env_steps,
                    episodes=episodes,
                    updates=learner.updates,
                    updates_per_s=rate,
                    version=version,
                    budget=budget,
                    actors=sorted(publisher.actors_reporting()),
                )
                next_progress = time.monotonic() + 1.0
            wait_start = time.perf_counter()
            try:
                batch = sampler.sample(timeout=0.5)
            except TimeoutError:
                continue
            metrics.batch_wait_seconds.observe(time.perf_counter() - wait_start)
            start = time.perf_counter()
            result = learner.update(
                batch, "online", env_steps=env_steps, episodes_seen=offline_credit + episodes
            )
            update_times = (update_times + [time.perf_counter() - start])[-20:]
            metrics.learner_updates.inc()
            for part in ("td", "ovm", "cql", "total"):
                metrics.learner_loss.labels(part=part).set(result[f"loss_{part}"])
            metrics.q_tot_mean.set(result["q_tot_mean"])
            metrics.ovm_active_fraction.set(result["ovm_active_fraction"])
            metrics.memory_coefficient.set(result["memory_coefficient"])
            if learner.updates % cfg.learner.weight_publish_interval == 0:
                publish()
            if learner.updates % LOG_EVERY_UPDATES == 0:
                runlog.log("train", env_steps=env_steps, episodes=episodes, updates=learner.updates, **result)
            if cfg.learner.checkpoint_interval and learner.updates % cfg.learner.checkpoint_interval == 0:
                save()
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
        )
        if finished:
            drain_until_actors_finish(sampler, publisher, stop)
        return {"updates": learner.updates, "version": version, "env_steps": env_steps, "finished": finished}
    finally:
        if sampler is not None:
            sampler.close()
        publisher.stop()
        metrics.close()
        runlog.close()
