"""Every run writes TensorBoard event files beside metrics.jsonl, one directory per process, with the
same numbers: each record's numeric fields as `<kind>/<field>` at its env_steps (else its update
count). Read back here with TensorBoard's own reader. Writing them never imports TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import resolve_config
from common.run_log import RunLog


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard itself loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def expected_scalars(log: RunLog, kind: str) -> dict[str, list[tuple[int, float]]]:
    """What the event files should hold for the records of `kind` in metrics.jsonl."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in log.read(kind):
        step_field = next(f for f in ("env_steps", "updates", "update") if f in record)
        for name, value in record.items():
            if name in ("kind", "time", step_field) or isinstance(value, str) or value is None:
                continue
            out.setdefault(f"{kind}/{name}", []).append((record[step_field], float(value)))
    return out


def test_records_become_scalars_tagged_by_kind_and_field(tmp_path):
    log = RunLog(tmp_path, process="learner")
    log.log("train", env_steps=100, updates=5, loss_total=0.25, epsilon=0.5, method="ovmse")
    log.log("train", env_steps=200, updates=10, loss_total=0.125, epsilon=0.25, method="ovmse")
    log.log("offline", update=3, loss_cql=1.5)
    log.log("eval", env_steps=200, win_rate=0.5, win_rate_low=0.25, win_rate_high=0.75, train_win_rate=None)
    log.close()
    scalars = read_scalars(tmp_path / "tensorboard" / "learner")
    assert scalars == {
        "train/updates": [(100, 5.0), (200, 10.0)],
        "train/loss_total": [(100, 0.25), (200, 0.125)],
        "train/epsilon": [(100, 0.5), (200, 0.25)],
        "offline/loss_cql": [(3, 1.5)],
        "eval/win_rate": [(200, 0.5)],
        "eval/win_rate_low": [(200, 0.25)],
        "eval/win_rate_high": [(200, 0.75)],
    }


def test_each_process_of_a_run_has_its_own_directory(tmp_path):
    learner, evaluator = RunLog(tmp_path, process="learner"), RunLog(tmp_path, process="evaluator")
    learner.log("train", env_steps=10, loss_total=1.0)
    evaluator.log("eval", env_steps=10, win_rate=0.25)
    learner.close()
    evaluator.close()
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["evaluator", "learner"]
    assert read_scalars(tmp_path / "tensorboard" / "learner") == {"train/loss_total": [(10, 1.0)]}
    assert read_scalars(tmp_path / "tensorboard" / "evaluator") == {"eval/win_rate": [(10, 0.25)]}


def test_writing_events_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from common.run_log import RunLog\n"
        f"log = RunLog({str(tmp_path)!r}, process='learner')\n"
        "log.log('train', env_steps=1, loss_total=0.5)\n"
        "log.close()\n"
        "print('TF', 'tensorflow' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "TF False" in done.stdout
    assert list((tmp_path / "tensorboard" / "learner").glob("events.out.tfevents.*"))


def test_the_installed_tensorboard_command_reads_a_runs_event_files(tmp_path):
    """The README's `tensorboard --logdir runs`, minus the server: the command installed beside this
    Python starts (TensorBoard 2.14 imports pkg_resources, gone from setuptools 82) and finds the tags."""
    beside_python = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
    command = beside_python or shutil.which("tensorboard")
    assert command, "the tensorboard command is not installed"
    log = RunLog(tmp_path / "runs" / "a", process="learner")
    log.log("train", env_steps=100, loss_total=0.25)
    log.close()
    done = subprocess.run(
        [command, "--inspect", "--logdir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train/loss_total" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_run_writes_the_scalars_of_its_metrics_log(tmp_path):
    """A small offline-to-online run (pre-training, online updates, evaluations with intervals and
    the probe): TensorBoard shows exactly the numbers of metrics.jsonl."""
    from deploy.recipes import CollectRequest, collect_dataset
    from deploy.single_process import train_sync
    from learner.training import LOG_EVERY_UPDATES

    dataset = tmp_path / "3m.h5"
    cfg = resolve_config(
        map_name="3m",
        method="ovmse",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=tb",
            f"run.dataset={dataset}",
            # The first online update is the learner's LOG_EVERY_UPDATES-th, so a "train" record is
            # logged however few online updates the budget's episodes allow.
            f"learner.offline_updates={LOG_EVERY_UPDATES - 1}",
            "learner.behaviour_pretrain_updates=0",
            "run.offline_eval_interval=0",
            "run.online_env_steps=700",
            "run.eval_interval_steps=350",
            "learner.batch_size=8",
            "learner.batch_size_run=1",
            "replay.min_size_to_sample=8",
            "actor.test_episodes=4",
            "run.log_interval_s=1000",
        ],
    )
    collect_dataset(cfg, CollectRequest(out=str(dataset), episodes=16, num_envs=8), progress=False)
    result = train_sync(cfg, progress=False, final_test_episodes=4)
    log = RunLog(result.run_dir)
    scalars = read_scalars(result.run_dir / "tensorboard" / "trainer")
    for kind in ("offline", "train", "eval", "final_eval"):
        want = expected_scalars(log, kind)
        assert want, f"the run logged no {kind} record"
        for tag, points in want.items():
            got = scalars.get(tag, [])
            assert [step for step, _ in got] == [step for step, _ in points], tag
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    shown = {"eval/win_rate", "eval/win_rate_low", "eval/win_rate_high", "eval/return_ci", "eval/probe_q"}
    shown |= {"eval/policy_agreement", "train/loss_total", "offline/loss_total", "final_eval/win_rate"}
    assert shown <= set(scalars)
