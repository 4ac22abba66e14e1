"""The synchronous trainer: the reference semantics the distributed system must match.

One process: an in-process Reverb server holds the offline dataset and the online episodes; a batch
of `batch_size_run` lite battles (PyMARL's parallel runner) plays with the learner's newest weights;
after every `batch_size_run` new episodes the learner takes one gradient step on a mixed batch,
once the online table can be sampled (PyMARL2's `can_sample`).

    offline phase: learner.offline_updates steps of TD + CQL on offline-only batches
    switch:        freeze the offline target networks as OVM's memory; evaluate (offline win rate)
    online phase:  act, insert, train, evaluate every run.eval_interval_steps
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.eval_process import eval_worker_for
from actors.evaluator import evaluate, summarize
from actors.rollout import RolloutWorker
from common.config.sections import Config, rate_limit
from common.envs.factory import make_batch_env
from common.episode import Episode, to_training_batch
from common.run_log import ProgressLine, RunLog, fresh_run_dir
from common.schedules import epsilon_at
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.learning import QMixLearner
from learner.probe import mean_q_tot

PROBE_EPISODES = 32


@dataclass
class TrainResult:
    run_dir: Path
    offline_win_rate: float | None
    final_win_rate: float
    final_return: float
    updates: int
    online_env_steps: int


def has_offline_phase(cfg: Config) -> bool:
    """Pre-train here unless there is no dataset, QMIX from scratch, or a checkpoint to start from."""
    return (
        cfg.run.dataset is not None
        and cfg.learner.offline_updates > 0
        and cfg.learner.method != "qmix"
        and cfg.run.init_checkpoint is None
    )


def eval_worker(cfg: Config, learner: QMixLearner) -> RolloutWorker:
    """The greedy test worker, as the distributed evaluator builds it (same battles, same seeds)."""
    return eval_worker_for(cfg)


def run_offline_phase(
    cfg: Config, learner: QMixLearner, sampler, log: RunLog | None = None, progress: bool = True
) -> dict:
    """`learner.offline_updates` gradient steps on offline-only batches, after CFCQL's
    behaviour-cloning phase where it is still due. Returns the last metrics."""
    updates = cfg.learner.offline_updates
    line = ProgressLine(updates, every_s=cfg.run.log_interval_s, unit="updates") if progress else None
    metrics: dict = {}
    for i in range(learner.behaviour_pretraining_left):  # CFCQL: behaviour cloning first, then frozen
        loss_bc = learner.pretrain_behaviour(sampler.sample(timeout=120))
        if log and i % 50 == 0:
            log.log("behaviour", update=i + 1, loss_bc=loss_bc)
    for i in range(updates):
        batch = sampler.sample(timeout=120)
        # Offline updates are credited batch_size_run episodes each, as if collected at the
        # online pace, so target copies happen every target_update_interval / batch_size_run updates.
        metrics = learner.update(
            batch, "offline", env_steps=0, episodes_seen=(i + 1) * cfg.learner.batch_size_run
        )
        if log and (i % 50 == 0 or i == updates - 1):
            log.log("offline", update=i + 1, **metrics)
        if line:
            line.maybe_print(
                i + 1, force=i == updates - 1, loss=metrics["loss_total"], q_tot=metrics["q_tot_mean"]
            )
    return metrics


def pretrain(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> TrainResult:
    """The offline phase alone: CQL pre-training on `run.dataset`, then a greedy evaluation.
    Writes checkpoints/offline.pt in the run directory."""
    from replay.sampler import MixedSampler
    from replay.server import start_replay_server

    if cfg.run.dataset is None or cfg.learner.offline_updates < 1:
        raise ValueError("pretrain needs run.dataset and learner.offline_updates >= 1")
    run_dir = fresh_run_dir(run_dir or Path(cfg.run.run_dir) / cfg.run.name)
    log = RunLog(run_dir)
    log.write_config(cfg)
    server = start_replay_server(cfg, dataset=cfg.run.dataset, port=0, progress=progress)
    try:
        learner = QMixLearner(make_batch_env(cfg.env, 1).get_env_info(), cfg.learner, seed=cfg.run.seed)
        sampler = MixedSampler.from_config(cfg, server.address, mixing_ratio=1.0)
        try:
            run_offline_phase(cfg, learner, sampler, log, progress)
        finally:
            sampler.close()
        path = save_checkpoint(learner, run_dir / "checkpoints" / "offline.pt", extra={"phase": "offline"})
        evaluator = eval_worker(cfg, learner)
        evaluator.set_weights(learner.agent_state_dict(), 1)
        result = evaluate(evaluator, cfg.actor.test_episodes)
        log.log("eval", env_steps=0, win_rate=result.win_rate, **{"return": result.mean_return})
        print(
            f"offline pre-training done: test win rate {result.win_rate:.3f}, "
            f"return {result.mean_return:.2f}; checkpoint {path}",
            flush=True,
        )
        return TrainResult(run_dir, result.win_rate, result.win_rate, result.mean_return, learner.updates, 0)
    finally:
        server.stop()
        log.close()


def train_sync(
    cfg: Config,
    run_dir: str | Path | None = None,
    progress: bool = True,
    final_test_episodes: int | None = None,
    dump_replay_to: str | Path | None = None,
) -> TrainResult:
    """Run the configured method; with `dump_replay_to`, write the online buffer at the end of the
    run (the last `replay.online_capacity` episodes, as the FIFO table holds them) to that dataset
    file: the paper's medium-replay recipe when the method is qmix."""
    from replay.sampler import MixedSampler
    from replay.server import start_replay_server
    from replay.writer import EpisodeWriter

    run_dir = fresh_run_dir(run_dir or Path(cfg.run.run_dir) / cfg.run.name)
    log = RunLog(run_dir)
    log.write_config(cfg)
    offline = has_offline_phase(cfg)
    server = start_replay_server(
        cfg,
        dataset=cfg.run.dataset if offline or cfg.replay.mixing_ratio > 0 else None,
        port=0,
        progress=progress,
    )
    learner = QMixLearner(make_batch_env(cfg.env, 1).get_env_info(), cfg.learner, seed=cfg.run.seed)
    evaluator = eval_worker(cfg, learner)
    offline_win_rate = None
    probe = None
    try:
        if offline:
            print(f"offline phase: {cfg.learner.offline_updates} updates on {cfg.run.dataset}", flush=True)
            sampler = MixedSampler.from_config(cfg, server.address, mixing_ratio=1.0)
            try:
                run_offline_phase(cfg, learner, sampler, log, progress)
            finally:
                sampler.close()
            save_checkpoint(learner, run_dir / "checkpoints" / "offline.pt", extra={"phase": "offline"})
        elif cfg.run.init_checkpoint:
            load_checkpoint(learner, cfg.run.init_checkpoint)
            print(f"starting from {cfg.run.init_checkpoint} ({learner.updates} updates so far)", flush=True)
        pretrained = offline or cfg.run.init_checkpoint is not None
        if cfg.learner.use_offline_value_memory:
            learner.freeze_offline_memory()

        version = 1
        evaluator.set_weights(learner.agent_state_dict(), version)
        # Greedy play of the starting policy: its test score, and the probe episodes of Figure 1.
        start_episodes = evaluator.run_episodes(max(PROBE_EPISODES, cfg.actor.test_episodes))
        probe = to_training_batch(start_episodes[:PROBE_EPISODES])
        if pretrained:
            offline_win_rate, offline_return = summarize(start_episodes)
            log.log(
                "eval",
                env_steps=0,
                win_rate=offline_win_rate,
                **{"return": offline_return},
                probe_q=mean_q_tot(learner, probe),
                policy_version=version,
            )
            print(
                f"after offline pre-training: test win rate {offline_win_rate:.3f}, "
                f"return {offline_return:.2f}",
                flush=True,
            )

        buffer = collections.deque(maxlen=cfg.replay.online_capacity) if dump_replay_to else None
        result = _online_phase(
            cfg,
            learner,
            server,
            evaluator,
            probe,
            log,
            progress,
            version,
            EpisodeWriter,
            MixedSampler,
            buffer,
        )
        if buffer:
            from replay.dataset import write_dataset

            source = f"{cfg.learner.method} replay buffer"
            write_dataset(
                dump_replay_to,
                list(buffer),
                evaluator.env.episode_limit,
                attrs={"map_name": cfg.env.map_name, "source": source},
            )
            print(f"wrote the online buffer ({len(buffer)} episodes) to {dump_replay_to}", flush=True)
        final_n = cfg.actor.final_test_episodes if final_test_episodes is None else final_test_episodes
        final = evaluate(evaluator, final_n) if final_n > 0 else None
        if final is not None:
            log.log(
                "final_eval",
                env_steps=result["env_steps"],
                episodes=final.episodes,
                win_rate=final.win_rate,
                **{"return": final.mean_return},
            )
        save_checkpoint(
            learner,
            run_dir / "checkpoints" / "final.pt",
            extra={"phase": "online", "env_steps": result["env_steps"], "version": result["version"]},
        )
        log.plot_eval(offline_win_rate)
        last = log.read("eval")[-1]
        return TrainResult(
            run_dir=run_dir,
            offline_win_rate=offline_win_rate,
            final_win_rate=final.win_rate if final else last["win_rate"],
            final_return=final.mean_return if final else last["return"],
            updates=learner.updates,
            online_env_steps=result["env_steps"],
        )
    finally:
        server.stop()
        log.close()


def _online_phase(
    cfg, learner, server, evaluator, probe, log, progress, version, writer_cls, sampler_cls, buffer=None
) -> dict:
    budget = cfg.run.online_env_steps
    bsr = cfg.learner.batch_size_run
    min_online = rate_limit(cfg).min_size_to_sample
    samples_online = cfg.replay.mixing_ratio < 1.0
    worker = RolloutWorker(
        make_batch_env(cfg.env, bsr),
        learner.make_agent(),
        exploration=cfg.actor.exploration,
        seed=cfg.run.seed,
        actor_id=0,
    )
    worker.set_weights(learner.agent_state_dict(), version)
    writer = writer_cls(server.client())
    # The reference semantics: sample exactly when PyMARL would, so no prefetching ahead.
    sampler = sampler_cls.from_config(cfg, server.address, prefetch_batches=0)
    line = ProgressLine(budget, every_s=cfg.run.log_interval_s) if progress else None
    episodes_offline = learner.updates * bsr  # the clock of target copies keeps running
    online_inserted = 0
    pending = 0  # episodes collected since the last gradient step
    next_eval = cfg.run.eval_interval_steps
    recent: list[Episode] = []
    last_eval = {"win_rate": float("nan")}
    update_times: list[float] = []
    try:
        while worker.env_steps < budget:
            finished = worker.step(epsilon_at(cfg.actor, worker.env_steps))
            for ep in finished:
                writer.write(ep)
            if buffer is not None:
                buffer.extend(finished)
            online_inserted += len(finished)
            pending += len(finished)
            recent = (recent + finished)[-100:]
            while pending >= bsr:
                pending -= bsr
                if samples_online and online_inserted < min_online:
                    continue
                t0 = time.perf_counter()
                batch = sampler.sample(timeout=60)
                episodes_seen = episodes_offline + online_inserted
                metrics = learner.update(
                    batch, "online", env_steps=worker.env_steps, episodes_seen=episodes_seen
                )
                update_times.append(time.perf_counter() - t0)
                version += 1
                worker.set_weights(learner.agent_state_dict(), version)
                if learner.updates % 20 == 0:
                    log.log(
                        "train",
                        env_steps=worker.env_steps,
                        updates=learner.updates,
                        epsilon=epsilon_at(cfg.actor, worker.env_steps),
                        **metrics,
                    )
            if worker.env_steps >= next_eval or worker.env_steps >= budget:
                next_eval += cfg.run.eval_interval_steps
                evaluator.set_weights(learner.agent_state_dict(), version)
                result = evaluate(evaluator, cfg.actor.test_episodes)
                train_win, train_return = summarize(recent)
                last_eval = {"win_rate": result.win_rate}
                log.log(
                    "eval",
                    env_steps=worker.env_steps,
                    win_rate=result.win_rate,
                    **{"return": result.mean_return},
                    probe_q=mean_q_tot(learner, probe),
                    train_win_rate=train_win,
                    train_return=train_return,
                    updates=learner.updates,
                    policy_version=version,
                )
            if line:
                rate = len(update_times[-20:]) / max(sum(update_times[-20:]), 1e-9) if update_times else 0.0
                line.maybe_print(
                    worker.env_steps,
                    episodes=worker.episodes,
                    updates=learner.updates,
                    updates_per_s=rate,
                    test_win_rate=last_eval["win_rate"],
                )
        if line:
            line.maybe_print(
                worker.env_steps,
                force=True,
                episodes=worker.episodes,
                updates=learner.updates,
                test_win_rate=last_eval["win_rate"],
            )
    finally:
        sampler.close()
        writer.close()
    return {
        "env_steps": worker.env_steps,
        "version": version,
        "train_win_rate": float(np.mean([e.meta.battle_won for e in recent])) if recent else 0.0,
    }
