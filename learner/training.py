"""The training loop both trainers share: where training starts, the offline phase, online updates.

The one-process trainer and the distributed learner differ only in where batches and episode counts
come from; everything else is here, so the two cannot drift apart:

    start = start_point(learner, cfg, run_dir, offline_batches, runlog)   # resume | init | pre-train
    updates = OnlineUpdates(learner, cfg, start, publish, runlog, checkpoint)
    ...
    metrics = updates.step(batch, env_steps, episodes)                    # per online batch

`offline_batches` and the online batches are anything with `sample(timeout=...) -> TrainingBatch`
and `close()`: the replay server's mixed sampler, or an in-process episode store.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.config.algorithms import algorithm_spec
from common.config.presets import METHODS
from common.config.sections import Config
from common.episode import TrainingBatch, to_training_batch
from common.episode_checks import NON_FINITE_LOSS, episode_problem, expected_layout
from common.errors import RunHalted
from common.run_log import ProgressLine, RunLog
from common.schedules import epsilon_at
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.interface import Learner

logger = logging.getLogger(__name__)

LOG_EVERY_UPDATES = 20  # a "train" record every this many online updates
OFFLINE_LOG_EVERY = 50  # an "offline" record every this many offline updates
# A skipped update (non-finite loss) is a bad batch; this many in a row means the learner itself is
# broken, and the run stops instead of spinning. Updates skipped for episodes found and taken out of
# the replay (`blame_episodes`) do not count: the learner computed the rest of the batch finitely.
MAX_SKIPPED_IN_A_ROW = 50
# An episode whose own value estimate or return reaches this is blamed too: squared in the loss, it
# would overflow float32 (3.4e38).
LOSS_VALUE_LIMIT = 1e18


class BatchSource(Protocol):
    def sample(self, timeout: float | None = None) -> TrainingBatch: ...

    def close(self) -> None: ...


def blame_episodes(learner: Learner, batch: TrainingBatch, expected=None) -> list[tuple[int, str]]:
    """The episodes of a batch whose update was not finite that are to blame, as (index, reason):
    each one the episode check (`common.episode_checks`, against `expected`) refuses, with its
    reason; and each whose own values the learner cannot compute finitely (its value diagnostics on
    the episode alone, NON_FINITE_LOSS), unless no episode of the batch passes both (then the
    learner is at fault, not the data, and none is blamed for its numbers)."""
    blamed: list[tuple[int, str]] = []
    numbers: list[int] = []
    for i in range(batch.batch_size):
        episode = batch.episode(i)
        problem = episode_problem(episode, expected)
        if problem is not None:
            blamed.append((i, problem.reason))
            continue
        values = learner.value_diagnostics(to_training_batch([episode]))
        if not all(math.isfinite(v) and abs(v) < LOSS_VALUE_LIMIT for v in values.values()):
            numbers.append(i)
    if numbers and len(blamed) + len(numbers) < batch.batch_size:
        blamed += [(i, NON_FINITE_LOSS) for i in numbers]
    return sorted(blamed)


def has_offline_phase(cfg: Config) -> bool:
    """Pre-train unless there is no dataset, QMIX from scratch, or a checkpoint to start from, or
    nothing to do (no updates, and no behaviour cloning that is itself the policy: InSPO's)."""
    return (
        cfg.run.dataset is not None
        and (cfg.learner.offline_updates > 0 or clones_only(cfg))
        and METHODS[cfg.learner.method].offline_phase
        and cfg.run.init_checkpoint is None
    )


def clones_only(cfg: Config) -> bool:
    """Behaviour cloning alone (method bc): a learner family whose cloned behaviour is itself a
    policy (InSPO's), with no policy updates after cloning."""
    return (
        algorithm_spec(cfg.learner.algorithm).cloning_alone_is_a_policy
        and cfg.learner.offline_updates == 0
        and cfg.learner.behaviour_pretrain_updates > 0
    )


def run_offline_phase(
    cfg: Config,
    learner: Learner,
    batches: BatchSource,
    log: RunLog | None = None,
    progress: bool = True,
    evaluate: Callable[[int], None] | None = None,
    done: int = 0,
    after_evaluation: Callable[[int], None] | None = None,
) -> dict:
    """`learner.offline_updates` gradient steps on offline-only batches, after CFCQL's
    behaviour-cloning phase where it is still due. Returns the last metrics. `evaluate(updates)` is
    called every `run.offline_eval_interval` updates and after the last, then
    `after_evaluation(updates)` (where a resumable caller saves its state); `done` updates already
    ran (a resumed phase goes on from there)."""
    updates = cfg.learner.offline_updates
    every = cfg.run.offline_eval_interval
    metrics: dict = {}
    cloning = learner.behaviour_pretraining_left
    line = (
        ProgressLine(cloning, every_s=cfg.run.log_interval_s, unit="BC updates")
        if progress and cloning
        else None
    )
    for i in range(cloning):  # CFCQL: behaviour cloning first, then frozen
        loss_bc = learner.pretrain_behaviour(batches.sample(timeout=120))
        if log and (i % OFFLINE_LOG_EVERY == 0 or i == cloning - 1):
            log.log("behaviour", update=i + 1, loss_bc=loss_bc)
        if line:
            line.maybe_print(i + 1, force=i == cloning - 1, loss_bc=loss_bc)
    line = (
        ProgressLine(updates, every_s=cfg.run.log_interval_s, unit="updates", start_steps=done)
        if progress
        else None
    )
    for i in range(done, updates):
        batch = batches.sample(timeout=120)
        # Offline updates are credited batch_size_run episodes each, as if collected at the
        # online pace, so target copies happen every target_update_interval / batch_size_run updates.
        metrics = learner.update(
            batch, "offline", env_steps=0, episodes_seen=(i + 1) * cfg.learner.batch_size_run
        )
        if log and (i % OFFLINE_LOG_EVERY == 0 or i == updates - 1):
            log.log("offline", update=i + 1, **metrics)
        if line:
            line.maybe_print(
                i + 1, force=i == updates - 1, loss=metrics["loss_total"], q_tot=metrics["q_tot_mean"]
            )
        if evaluate is not None and (i == updates - 1 or (every and (i + 1) % every == 0)):
            evaluate(i + 1)
            if after_evaluation is not None:
                after_evaluation(i + 1)
    return metrics


@dataclass(frozen=True)
class StartPoint:
    """Where online training begins.

    version: the last weight version published before (0 unless resumed).
    offline_credit: episodes credited to offline updates (the target-copy clock keeps running).
    resumed: continued from the run's own learner checkpoint (mid-run; no fresh start weights).
    pretrained: the starting policy came out of offline training (here or in `run.init_checkpoint`).
    env_steps, episodes: online totals at the resumed checkpoint (0 otherwise)."""

    version: int = 0
    offline_credit: int = 0
    resumed: bool = False
    pretrained: bool = False
    env_steps: int = 0
    episodes: int = 0
    actor_sessions: list = field(default_factory=list)  # the weight service's per-session totals


def learner_checkpoint(run_dir: str | Path) -> Path:
    """The run's own learner checkpoint, written periodically and at the end."""
    return Path(run_dir) / "checkpoints" / "learner.pt"


def start_point(
    learner: Learner,
    cfg: Config,
    run_dir: str | Path,
    offline_batches: Callable[[], BatchSource],
    log: RunLog | None = None,
    progress: bool = True,
    evaluate: Callable[[int], None] | None = None,
) -> StartPoint:
    """Bring `learner` to where online training starts, in this order of preference:
    resume the run's own checkpoint; else load `run.init_checkpoint`, or the run's own
    checkpoints/offline.pt (restarted after pre-training, before an online checkpoint); else
    pre-train offline on batches from `offline_batches()` (made only when needed), calling
    `evaluate(updates)` as `run_offline_phase` says, and save checkpoints/offline.pt.
    Then, for OVM, freeze the offline memory unless the loaded checkpoint already carries one."""
    credit = cfg.learner.batch_size_run
    resume = learner_checkpoint(run_dir)
    own_offline = Path(run_dir) / "checkpoints" / "offline.pt"
    if resume.exists():
        extra = load_checkpoint(learner, resume, map_name=cfg.env.map_name)
        start = StartPoint(
            version=int(extra.get("version", 0)),
            offline_credit=int(extra.get("offline_credit", 0)),
            resumed=True,
            pretrained=True,
            env_steps=int(extra.get("env_steps", 0)),
            episodes=int(extra.get("episodes", 0)),
            actor_sessions=list(extra.get("actor_sessions", [])),
        )
        print(
            f"learner: resumed from {resume} (version {start.version}, {learner.updates} updates)", flush=True
        )
    elif cfg.run.init_checkpoint or own_offline.exists():
        # A learner restarted before its first online checkpoint reuses its own pre-training.
        path = cfg.run.init_checkpoint or own_offline
        load_checkpoint(learner, path, map_name=cfg.env.map_name)
        print(f"starting from {path} ({learner.updates} updates so far)", flush=True)
        start = StartPoint(offline_credit=learner.updates * credit, pretrained=True)
    elif has_offline_phase(cfg):
        print(f"offline phase: {cfg.learner.offline_updates} updates on {cfg.run.dataset}", flush=True)
        batches = offline_batches()
        try:
            run_offline_phase(cfg, learner, batches, log, progress, evaluate)
        finally:
            batches.close()
        save_checkpoint(learner, own_offline, extra={"phase": "offline"}, map_name=cfg.env.map_name)
        start = StartPoint(offline_credit=learner.updates * credit, pretrained=True)
    else:
        start = StartPoint()
    if cfg.learner.use_offline_value_memory and not learner.offline_memory_frozen:
        learner.freeze_offline_memory()
    return start


class OnlineUpdates:
    """One online gradient step at a time, and what follows it: publishing the new weights every
    `learner.weight_publish_interval` updates, a "train" record every LOG_EVERY_UPDATES (with the
    update's metrics and how many of the batch's episodes came from the offline data), and a
    checkpoint every `learner.checkpoint_interval` updates or `learner.checkpoint_interval_s`
    seconds, whichever comes first. An update the learner skipped (its loss or gradient was not
    finite: nothing changed) is counted in `skipped` and followed by none of these; given
    `discard` (the replay's: it deletes items named by `TrainingBatch.items`, counted by reason),
    the batch's episodes are checked one by one (`blame_episodes`) and those to blame are taken out
    of the replay, so that no later batch, and no restarted learner, meets them again.

    `episodes` passed to `step` counts the online episodes collected so far (the target-copy clock
    adds the offline credit to it); `env_steps` the online environment steps (OVM's lambda_t)."""

    def __init__(
        self,
        learner: Learner,
        cfg: Config,
        start: StartPoint,
        publish: Callable[[], None],
        log: RunLog | None = None,
        checkpoint: Callable[[], None] | None = None,
        discard: Callable[[list], int] | None = None,
    ):
        self.learner = learner
        self.cfg = cfg
        self.discard = discard
        self.expected = expected_layout(cfg.env)  # what the batch's episodes are checked against
        self.blamed = 0  # episodes taken out of the replay after a non-finite update
        self.offline_credit = start.offline_credit
        self.publish = publish
        self.log = log
        self.checkpoint = checkpoint
        self._seconds: list[float] = []  # the last few update durations
        self.last_metrics: dict = {}
        self.skipped = 0  # updates skipped for a non-finite loss or gradient
        self._skipped_in_a_row = 0
        self._checkpointed_at = time.monotonic()

    def step(self, batch: TrainingBatch, env_steps: int, episodes: int) -> dict:
        began = time.perf_counter()
        learner, cfg = self.learner, self.cfg.learner
        metrics = learner.update(
            batch, "online", env_steps=env_steps, episodes_seen=self.offline_credit + episodes
        )
        self._seconds = (self._seconds + [time.perf_counter() - began])[-20:]
        if metrics["update_skipped"]:
            self.skipped += 1
            if self._take_out_blamed(batch):
                return metrics  # the data's fault, and gone: the learner is not stuck
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise RunHalted(
                    f"{self._skipped_in_a_row} updates in a row had a non-finite loss or gradient "
                    f"(after {learner.updates} good ones); stopping: the learner cannot recover"
                )
            return metrics
        self._skipped_in_a_row = 0
        self.last_metrics = metrics
        if learner.updates % cfg.weight_publish_interval == 0:
            self.publish()
        if self.log is not None and learner.updates % LOG_EVERY_UPDATES == 0:
            self.log.log(
                "train",
                env_steps=env_steps,
                episodes=episodes,
                updates=learner.updates,
                epsilon=epsilon_at(self.cfg.actor, env_steps),
                offline_episodes=int(batch.offline.sum()),  # of this batch's batch_size
                **metrics,
            )
        by_updates = cfg.checkpoint_interval and learner.updates % cfg.checkpoint_interval == 0
        since = time.monotonic() - self._checkpointed_at
        by_time = cfg.checkpoint_interval_s and since >= cfg.checkpoint_interval_s
        if self.checkpoint is not None and (by_updates or by_time):
            self.checkpoint()
            self._checkpointed_at = time.monotonic()
        return metrics

    def _take_out_blamed(self, batch: TrainingBatch) -> int:
        """After a skipped update: the batch's episodes to blame, discarded from the replay."""
        if self.discard is None or batch.items is None:
            return 0
        blamed = blame_episodes(self.learner, batch, self.expected)
        if not blamed:
            return 0
        self.discard([(batch.items[i], reason) for i, reason in blamed])
        self.blamed += len(blamed)
        reasons = sorted({reason for _, reason in blamed})
        logger.warning(
            "a non-finite update: %d of the batch's %d episodes to blame (%s), taken out of the replay",
            len(blamed),
            batch.batch_size,
            ", ".join(reasons),
        )
        return len(blamed)

    @property
    def updates_per_s(self) -> float:
        return len(self._seconds) / max(sum(self._seconds), 1e-9) if self._seconds else 0.0
