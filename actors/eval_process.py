"""The evaluator process of a distributed run (`ovmse evaluate`, following the live learner).

Every `run.eval_interval_steps` global environment steps it plays `actor.test_episodes` greedy
episodes with the newest weights and records the test win rate and return with their 95%
intervals. The first evaluation, at step 0, scores the weights online training started from (the
offline pre-trained policy); an evaluator that connects after training has moved on fetches those
from the learner first. When the learner marks its last version done, it plays
`actor.final_test_episodes` episodes and writes the plots.

Each evaluation is actors/evaluation_step.py's step, the one the one-process trainer takes too: the
starting policy's greedy episodes become the probe, and every later row logs the policy agreement on
them beside the learner's OVM-active fraction (probe.png draws both). The probe is kept in the run
directory (checkpoints/probe.pt), so a restarted evaluator, or one of a resumed run (whose learner
no longer has the start weights), logs the agreement on the same episodes; without that file it
rebuilds the probe from the start weights, which replay the same battles.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

from actors.evaluation_step import EvaluationStep, Probe
from actors.evaluator import evaluate
from actors.rollout import RolloutWorker
from actors.weight_client import WeightSubscriber, fetch_start
from common.atomic_files import atomic_path
from common.config.sections import Config
from common.episode import TrainingBatch
from common.metrics import Metrics
from common.run_log import RunLog

PROBE_FILE = "probe.pt"  # in the run's checkpoints/


@dataclass
class EvaluatorParts:
    """What the evaluator process runs, built by the caller (deploy/builder.py)."""

    worker: RolloutWorker
    subscriber: WeightSubscriber
    metrics: Metrics
    log: RunLog


def log_result(runlog: RunLog, kind: str, env_steps: int, result, **extra) -> None:
    """One record of `kind`: win rate and return with their 95% intervals, version, `extra`."""
    runlog.log(
        kind,
        env_steps=env_steps,
        **result.log_fields(),
        episodes=result.episodes,
        policy_version=result.policy_version,
        **extra,
    )


def probe_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / PROBE_FILE


def save_probe(path: Path, probe: Probe) -> None:
    """The probe episodes and the starting policy's joint actions there (tensors only), atomically."""
    import torch

    batch = {f.name: getattr(probe.batch, f.name) for f in dataclasses.fields(probe.batch)}
    with atomic_path(path) as tmp:
        torch.save({"batch": batch, "start_actions": probe.start_actions}, tmp)


def load_probe(path: Path) -> Probe | None:
    """The probe `save_probe` wrote, or None when there is none (or it cannot be read: then it is
    rebuilt from the start weights where the learner still has them)."""
    import torch

    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Probe(TrainingBatch(**saved["batch"]), saved["start_actions"])
    except Exception:  # noqa: BLE001 - a damaged file is the same as none
        return None


def run_evaluator(cfg: Config, parts: EvaluatorParts, stop: threading.Event) -> dict:
    worker, metrics, runlog = parts.worker, parts.metrics, parts.log
    subscriber = parts.subscriber.start()
    interval = cfg.run.eval_interval_steps
    # A restarted evaluator (compose restarts it) carries on from the evaluations already logged.
    earlier = runlog.read("eval")
    first_win_rate = earlier[0]["win_rate"] if earlier else None
    next_eval = (int(earlier[-1]["env_steps"]) // interval + 1) * interval if earlier else 0
    latest, final = None, None
    step = EvaluationStep(worker, runlog, cfg.actor.test_episodes)
    kept = probe_path(runlog.dir)
    step.probe = load_probe(kept)  # a restarted or resumed evaluator's probe
    probe_saved = step.probe is not None
    asked_for_start = False  # a learner resumed mid-run has no start weights: ask once

    def evaluate_and_log(message) -> None:
        nonlocal first_win_rate
        result, _ = step.score(
            message.state_dict,
            message.version,
            int(message.extra.get("env_steps", 0)),
            start=bool(message.extra.get("start")),
            updates=int(message.extra.get("updates", 0)),
            ovm_active_fraction=message.extra.get("ovm_active_fraction"),
        )
        metrics.test_win_rate.set(result.win_rate)
        metrics.test_return.set(result.mean_return)
        metrics.policy_version.labels(role="evaluator").set(message.version)
        first_win_rate = result.win_rate if first_win_rate is None else first_win_rate
        save_probe_once()

    def save_probe_once() -> None:
        nonlocal probe_saved
        if step.probe is not None and not probe_saved:
            save_probe(kept, step.probe)
            probe_saved = True

    try:
        while not stop.is_set():
            message = subscriber.take()
            if message is not None:
                latest = message
            if latest is None:
                stop.wait(0.05)
                continue
            if step.probe is None and not asked_for_start and not latest.extra.get("start"):
                asked_for_start = True
                # Joined (or restarted) after the start: score the start weights if not yet logged,
                # else only rebuild the probe from them.
                start = fetch_start(subscriber.target, subscriber.max_message_bytes, token=subscriber.token)
                if start is not None and start.version > worker.newest_version:
                    if first_win_rate is None:
                        evaluate_and_log(start)
                    else:
                        step.keep_probe(start.state_dict, start.version)
                        save_probe_once()
            steps, done = int(latest.extra.get("env_steps", 0)), bool(latest.extra.get("done"))
            if steps >= next_eval or done:
                evaluate_and_log(latest)
                next_eval = (steps // interval + 1) * interval
            if done:
                if cfg.actor.final_test_episodes > 0:
                    final = evaluate(worker, cfg.actor.final_test_episodes)
                    log_result(runlog, "final_eval", steps, final)
                break
            stop.wait(0.05)
        plots = runlog.plot_eval(offline_win_rate=first_win_rate)
        plots.append(runlog.plot_probe())
        return {
            "first_win_rate": first_win_rate,
            "final_win_rate": final.win_rate if final else None,
            "plots": [str(p) for p in plots if p is not None],
        }
    finally:
        subscriber.stop()
        metrics.close()
        runlog.close()
