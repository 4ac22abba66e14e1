"""The one-process trainer: the reference semantics the distributed system must match.

One process: an in-process replay (replay/local.py, no Reverb) holds the offline dataset and the
online episodes and samples them with generators seeded from run.seed, so a seed repeats a run; a
batch of `batch_size_run` lite battles (PyMARL's parallel runner) plays with the learner's newest
weights; after every `batch_size_run` new episodes the learner takes one gradient step on a mixed
batch, once the online buffer can be sampled (PyMARL2's `can_sample`).

    start point:   pre-train (learner.offline_updates steps of TD + CQL on offline-only batches), or
                   start from run.init_checkpoint; freeze the offline memory for OVM
    switch:        evaluate the starting policy (offline win rate)
    online phase:  act, insert, train, evaluate every run.eval_interval_steps

The start point and the update step are learner/training.py's, shared with the distributed learner.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.evaluation_step import EvaluationStep, Probe
from actors.evaluator import evaluate, summarize
from common.config import write_config
from common.config.sections import Config, rate_limit
from common.episode import Episode, TrainingBatch
from common.run_log import ProgressLine, RunLog, discarded_on_failure, fresh_run_dir, win_rate_text
from common.schedules import epsilon_at
from common.snapshot import capture, restore
from deploy.builder import Builder
from deploy.trainer_state import PRETRAIN_FILE, cut_logs_back, read_trainer_state, save_trainer_state
from learner.checkpoint import save_checkpoint, to_device
from learner.training import (
    OnlineUpdates,
    StartPoint,
    clones_only,
    has_offline_phase,
    run_offline_phase,
    start_point,
)
from replay.local import LocalReplay

# Generator streams of the in-process replay, seeded (run.seed, stream): pre-training draws the same
# batches in `ovmse pretrain` and in the offline phase of `ovmse train --mode sync`.
OFFLINE_STREAM, ONLINE_STREAM = 1, 2


@dataclass
class TrainResult:
    run_dir: Path
    offline_win_rate: float | None
    final_win_rate: float
    final_return: float
    updates: int
    online_env_steps: int


def pretrain(
    cfg: Config, run_dir: str | Path | None = None, progress: bool = True, resume: bool = False
) -> TrainResult:
    """The offline phase alone: CQL pre-training on `run.dataset`, then a greedy evaluation.
    Writes checkpoints/offline.pt in the run directory. After each offline evaluation it saves its
    state (checkpoints/pretrain.pt); with `resume`, a `run_dir` holding one goes on from there and
    ends with the evaluations and weights of a run that never stopped (the same `cfg` is the
    caller's to give: a sweep's trial has it from its sweep)."""
    if cfg.run.dataset is None or (cfg.learner.offline_updates < 1 and not clones_only(cfg)):
        raise ValueError("pretrain needs run.dataset and learner.offline_updates >= 1")
    given = Path(run_dir or cfg.run.path)
    state = read_trainer_state(given, cfg.env.map_name, PRETRAIN_FILE) if resume else None
    run_dir = given if state is not None else fresh_run_dir(given)
    with discarded_on_failure(run_dir):
        return _pretrain(cfg, run_dir, progress, state)


def _pretrain(cfg: Config, run_dir: Path, progress: bool, state: dict | None = None) -> TrainResult:
    builder = Builder(cfg)
    if state is not None:  # the records written after the state was taken go
        cut_logs_back(run_dir, state["logs"])
    log = RunLog(run_dir, process="pretrain")
    log.write_config(cfg)
    try:
        replay = builder.local_replay(cfg.run.dataset, mixing_ratio=1.0, stream=OFFLINE_STREAM, hold_out=True)
        learner = builder.learner()
        evaluator = builder.eval_worker()
        held_out = builder.offline_episodes(cfg.run.dataset)[1]
        curve = builder.offline_curve(learner, log, evaluator, held_out)
        done = 0
        if state is not None:
            learner.load_state_dict(to_device(state["learner"], learner.device))
            replay.load_state_dict(state["replay"])
            evaluator.load_state_dict(state["evaluator"])
            done = int(state["updates_done"])
            print(f"pretrain: resumed after {done} of {cfg.learner.offline_updates} updates", flush=True)

        def save_state(updates: int) -> None:
            parts = {"learner": learner.state_dict(), "replay": replay.state_dict()}
            parts.update(evaluator=evaluator.state_dict(), updates_done=updates)
            save_trainer_state(run_dir, parts, cfg.env.map_name, PRETRAIN_FILE)

        run_offline_phase(
            cfg, learner, replay, log, progress, evaluate=curve, done=done, after_evaluation=save_state
        )
        path = save_checkpoint(
            learner,
            run_dir / "checkpoints" / "offline.pt",
            extra={"phase": "offline"},
            map_name=cfg.env.map_name,
        )
        episodes = cfg.actor.final_test_episodes or cfg.actor.test_episodes
        # The weights the phase ended with (the offline curve may never have set any: bc has no
        # policy updates, so no curve point).
        evaluator.set_weights(learner.agent_state_dict(), evaluator.newest_version + 1)
        result = evaluate(evaluator, episodes)
        log.log("eval", env_steps=0, episodes=result.episodes, **result.log_fields())
        log.plot_offline_curve()
        print(
            f"offline pre-training done: test win rate {win_rate_text(result.log_fields())}, "
            f"return {result.mean_return:.2f} ({result.episodes} episodes); checkpoint {path}",
            flush=True,
        )
        return TrainResult(run_dir, result.win_rate, result.win_rate, result.mean_return, learner.updates, 0)
    finally:
        log.close()


def train_sync(
    cfg: Config,
    run_dir: str | Path | None = None,
    progress: bool = True,
    final_test_episodes: int | None = None,
    dump_replay_to: str | Path | None = None,
    stop_when: Callable[[dict], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run the configured method; with `dump_replay_to`, write the online buffer at the end of the
    run (the last `replay.online_capacity` episodes, as the FIFO table holds them) to that dataset
    file: the paper's medium-replay recipe when the method is qmix. `stop_when(eval_record)`, asked
    after every online evaluation, ends the online phase early when it returns true (training a
    behaviour policy to a stated level). With `resume`, a `run_dir` holding a trainer state
    (checkpoints/trainer.pt, written every `run.trainer_checkpoint_interval_s` and at the end of the
    online phase) goes on from it; `cfg` may differ from the run's config.yaml only in the fields
    `deploy.resume_changes.RESUMABLE_KEYS` names (a larger run.online_env_steps extends a finished run),
    and the run's config.yaml then records it."""
    from deploy.resume_changes import check_resume_changes

    given = Path(run_dir or cfg.run.path)
    state = read_trainer_state(given, cfg.env.map_name) if resume else None
    if state is not None:
        check_resume_changes(given, cfg)
    run_dir = given if state is not None else fresh_run_dir(given)
    with discarded_on_failure(run_dir):
        return _train_sync(cfg, run_dir, progress, final_test_episodes, dump_replay_to, stop_when, state)


def _train_sync(
    cfg: Config,
    run_dir: Path,
    progress: bool,
    final_test_episodes: int | None,
    dump_replay_to: str | Path | None,
    stop_when: Callable[[dict], bool] | None,
    state: dict | None = None,
) -> TrainResult:
    builder = Builder(cfg)
    if state is not None:  # the records written after the trainer state was taken go
        cut_logs_back(run_dir, state["logs"])
    log = RunLog(run_dir, process="trainer")
    write_config(cfg, run_dir / "config.yaml")
    pretrains = has_offline_phase(cfg)
    needs_dataset = pretrains or cfg.replay.mixing_ratio > 0
    # Pre-training here holds out the same episodes as `ovmse pretrain`, so it draws the same batches.
    replay = builder.local_replay(
        cfg.run.dataset if needs_dataset else None, stream=ONLINE_STREAM, hold_out=pretrains
    )
    learner = builder.learner()
    evaluator = builder.eval_worker()
    try:
        step = EvaluationStep(
            evaluator,
            log,
            cfg.actor.test_episodes,
            probe_values=lambda batch: {"probe_q": learner.probe_q(batch)},
        )
        if state is not None:
            start = StartPoint(**state["start"])
            offline_win_rate = state["offline_win_rate"]
            learner.load_state_dict(to_device(state["learner"], learner.device))
            step.probe = Probe(TrainingBatch(**state["probe_batch"]), state["probe_actions"])
            print(f"trainer: resumed at {state['loop']['env_steps']} env steps ({learner.updates} updates)")
        else:
            start, offline_win_rate = _start(cfg, builder, learner, replay, run_dir, log, step, progress)

        buffer = collections.deque(maxlen=cfg.replay.online_capacity) if dump_replay_to else None
        online = _online_phase(
            cfg,
            builder,
            learner,
            start,
            replay,
            step,
            progress,
            buffer,
            stop_when,
            run_dir,
            state,
            offline_win_rate,
        )
        if buffer:
            from replay.dataset_writer import write_dataset

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
                env_steps=online.env_steps,
                episodes=final.episodes,
                **final.log_fields(),
            )
        save_checkpoint(
            learner,
            run_dir / "checkpoints" / "final.pt",
            extra={"phase": "online", "env_steps": online.env_steps, "version": online.version},
            map_name=cfg.env.map_name,
        )
        log.plot_eval(offline_win_rate)
        log.plot_probe()
        last = log.read("eval")[-1]
        return TrainResult(
            run_dir=run_dir,
            offline_win_rate=offline_win_rate,
            final_win_rate=final.win_rate if final else last["win_rate"],
            final_return=final.mean_return if final else last["return"],
            updates=learner.updates,
            online_env_steps=online.env_steps,
        )
    finally:
        log.close()


def _start(cfg, builder, learner, replay, run_dir, log, step, progress) -> tuple[StartPoint, float | None]:
    """Where online training starts (pre-training first, or a checkpoint), and the starting policy
    scored at env step 0 (pre-trained, or QMIX's initial one); its episodes become the probe."""

    def offline_batches():
        return replay.with_mixing_ratio(1.0, seed=[cfg.run.seed, OFFLINE_STREAM])

    pretrains = has_offline_phase(cfg)
    held_out = builder.offline_episodes(cfg.run.dataset)[1] if pretrains else None
    curve = builder.offline_curve(learner, log, step.worker, held_out)
    start = start_point(learner, cfg, run_dir, offline_batches, log, progress, evaluate=curve)
    log.plot_offline_curve()
    first, _ = step.score(
        learner.agent_state_dict(),
        1,
        0,
        start=True,
        ovm_active_fraction=0.0,
        train_win_rate=None,  # no training episodes yet
        train_return=None,
        updates=learner.updates,
    )
    if not start.pretrained:
        return start, None
    print(
        f"after offline pre-training: test win rate {win_rate_text(first.log_fields())}, "
        f"return {first.mean_return:.2f}",
        flush=True,
    )
    return start, first.win_rate


@dataclass
class OnlineResult:
    env_steps: int
    version: int


@dataclass
class _Clocks:
    """The online loop's own counters (everything else it needs is in its parts)."""

    online_inserted: int = 0  # online episodes written to the replay
    pending: int = 0  # episodes collected since the last gradient step
    next_eval: int = 0
    version: int = 1  # the newest weight version the trainer's battles play
    last_win_rate: float = float("nan")


def _online_phase(
    cfg: Config,
    builder: Builder,
    learner,
    start: StartPoint,
    replay: LocalReplay,
    step: EvaluationStep,
    progress: bool,
    buffer: collections.deque | None,
    stop_when: Callable[[dict], bool] | None,
    run_dir: Path,
    state: dict | None,
    offline_win_rate: float | None,
) -> OnlineResult:
    budget = cfg.run.online_env_steps
    bsr = cfg.learner.batch_size_run
    min_online = rate_limit(cfg).min_size_to_sample
    samples_online = cfg.replay.mixing_ratio < 1.0
    worker = builder.trainer_worker()
    clocks = _Clocks(next_eval=cfg.run.eval_interval_steps)
    worker.set_weights(learner.agent_state_dict(), clocks.version)

    def publish() -> None:
        clocks.version += 1
        worker.set_weights(learner.agent_state_dict(), clocks.version)

    updates = OnlineUpdates(learner, cfg, start, publish, step.runlog, discard=replay.discard)
    recent: list[Episode] = []
    if state is not None:  # go on exactly where the trainer state was taken
        clocks = _Clocks(**state["loop"]["clocks"])
        worker.load_state_dict(state["worker"])
        step.worker.load_state_dict(state["evaluator"])
        replay.load_state_dict(state["replay"])
        recent = restore(None, state["loop"]["recent"])
        updates.skipped = int(state["loop"]["skipped"])
        updates.last_metrics = dict(state["loop"]["last_metrics"])
        if buffer is not None:  # the same episodes as the replay's online FIFO (the trainer's own)
            buffer.extend(replay.online)

    def save_state() -> None:
        probe = step.probe
        save_trainer_state(
            run_dir,
            {
                "start": dataclasses.asdict(start),
                "offline_win_rate": offline_win_rate,
                "learner": learner.state_dict(),
                "replay": replay.state_dict(),
                "worker": worker.state_dict(),
                "evaluator": step.worker.state_dict(),
                "probe_batch": {
                    f.name: getattr(probe.batch, f.name) for f in dataclasses.fields(probe.batch)
                },
                "probe_actions": probe.start_actions,
                "loop": {
                    "env_steps": worker.env_steps,
                    "clocks": dataclasses.asdict(clocks),
                    "recent": capture(recent),
                    "skipped": updates.skipped,
                    "last_metrics": dict(updates.last_metrics),
                },
            },
            cfg.env.map_name,
        )

    every_s = cfg.run.trainer_checkpoint_interval_s
    saved_at = time.monotonic()
    if math.isnan(clocks.last_win_rate):  # the starting policy's score, until the first online one
        evals = step.runlog.read("eval")
        clocks.last_win_rate = evals[-1]["win_rate"] if evals else clocks.last_win_rate
    # The rate counts the steps made by this process (a resumed run starts at its earlier ones).
    line = (
        ProgressLine(budget, every_s=cfg.run.log_interval_s, start_steps=worker.env_steps)
        if progress
        else None
    )

    def win_rate() -> dict:
        nan = math.isnan(clocks.last_win_rate)
        return {} if nan else {"test_win_rate": clocks.last_win_rate}

    while worker.env_steps < budget:
        finished = worker.step(epsilon_at(cfg.actor, worker.env_steps))
        replay.write_all(finished)
        if buffer is not None:
            buffer.extend(finished)
        clocks.online_inserted += len(finished)
        clocks.pending += len(finished)
        recent = (recent + finished)[-100:]
        while clocks.pending >= bsr:
            clocks.pending -= bsr
            if samples_online and clocks.online_inserted < min_online:
                continue
            updates.step(replay.sample(), worker.env_steps, clocks.online_inserted)
        if worker.env_steps >= clocks.next_eval or worker.env_steps >= budget:
            clocks.next_eval += cfg.run.eval_interval_steps
            train_win, train_return = summarize(recent)
            result, record = step.score(
                learner.agent_state_dict(),
                clocks.version,
                worker.env_steps,
                ovm_active_fraction=updates.last_metrics.get("ovm_active_fraction", 0.0),
                train_win_rate=train_win,
                train_return=train_return,
                updates=learner.updates,
            )
            clocks.last_win_rate = result.win_rate
            if stop_when is not None and stop_when(record):
                break
            # Only right after an evaluation, and taking it changes nothing: a resumed run ends
            # with the evaluations of one that never stopped.
            if every_s and worker.env_steps < budget and time.monotonic() - saved_at >= every_s:
                save_state()
                saved_at = time.monotonic()
        if line:
            line.maybe_print(
                worker.env_steps,
                episodes=worker.episodes,
                updates=learner.updates,
                updates_per_s=updates.updates_per_s,
                **win_rate(),
            )
    if every_s and worker.env_steps >= budget:
        # Right after the last evaluation: a finished run can be extended (a larger budget).
        save_state()
    if line:
        line.maybe_print(
            worker.env_steps,
            force=True,
            episodes=worker.episodes,
            updates=learner.updates,
            **win_rate(),
        )
    return OnlineResult(env_steps=worker.env_steps, version=clocks.version)
