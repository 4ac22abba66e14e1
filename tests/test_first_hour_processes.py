"""A user's first hour with the processes: Ctrl-C stops every command (children included) as
cleanly as SIGTERM does; `ovmse run` checks its inputs before it starts anything and never
restarts a process that failed on its configuration; `ovmse demo` runs the configuration its
options name; a finished run is extended with `--resume RUN --set run.online_env_steps=N`, and the
status line after a resume counts only new steps; no process a test starts outlives the test."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from common.config import resolve_config, write_config
from common.lifecycle import Terminated, sigterm_raises
from common.run_log import ProgressLine
from deploy import cli, embedded
from deploy.embedded import Child, EmbeddedRun
from deploy.studies import demo

ROOT = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------------------------


def marked_env(marker: str) -> dict[str, str]:
    """This environment, with `marker` in it: every process started under it inherits the marker."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "FIRST_HOUR_TEST_MARKER": marker,
    }


def processes_with(marker: str) -> dict[int, str]:
    """{pid: command line} of the live processes whose environment holds `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("State"))
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue
        if f"FIRST_HOUR_TEST_MARKER={marker}".encode() in environ and "Z" not in state.split()[1]:
            found[int(entry.name)] = cmdline
    return found


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def kill_all(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ovmse(args: list[str], marker: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", *args],
        cwd=cwd,
        env=marked_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(process: subprocess.Popen, pattern: str, timeout_s: float = 120.0) -> str:
    """Read the process's output until a line matches `pattern`; returns what was read."""
    seen: list[str] = []
    found = threading.Event()

    def reader() -> None:
        for line in process.stdout:
            seen.append(line)
            if re.search(pattern, line):
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout_s), f"no line matching {pattern!r} in:\n{''.join(seen)[-3000:]}"
    return "".join(seen)


SMALL_QMIX_RUN = [
    "--map", "3m", "--method", "qmix",
    "--set", "actor.num_actors=1", "--set", "actor.envs_per_actor=4",
    "--set", "learner.batch_size=16", "--set", "learner.checkpoint_interval=10",
    "--set", "actor.test_episodes=8", "--set", "actor.final_test_episodes=8",
    "--set", "run.eval_interval_steps=500", "--set", "run.log_interval_s=1",
]  # fmt: skip


# --- 4. Ctrl-C stops every command cleanly ---------------------------------------------------


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_block():
    # Python prints and drops an exception raised in a weakref callback or a __del__ (h5py's run
    # while a dataset is written): a Ctrl-C handled there must still reach the job's own code.
    class InterruptedWhileFinalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    deadline = time.monotonic() + 5.0
    with pytest.raises(KeyboardInterrupt) as stopped:
        with sigterm_raises():
            InterruptedWhileFinalized()  # finalized at once, the signal handled inside __del__
            while time.monotonic() < deadline:  # the job's own loop
                pass
    assert time.monotonic() < deadline, "the loop ran to its end: the Ctrl-C was lost"
    assert not isinstance(stopped.value, Terminated)  # a Ctrl-C, not a SIGTERM: exit status 130
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_ctrl_c_swallowed_as_the_block_ends_stops_it_there_not_later():
    # Delivered again after the block, the stop would land in the caller's own code (or end the
    # process by the signal, past its `except KeyboardInterrupt`): it is raised as the block ends.
    class InterruptedWhileFinalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with sigterm_raises():
            InterruptedWhileFinalized()  # swallowed; the block ends at once
    time.sleep(0.1)  # nothing is delivered after the block (it would raise here)


def test_ctrl_c_during_the_demo_s_dataset_collection_stops_the_demo(tmp_path):
    marker = uuid.uuid4().hex
    process = ovmse(["demo", "--map", "3m"], marker, tmp_path)
    data = tmp_path / "runs" / "demo"
    try:
        read_until(process, r"collecting \d+ episodes")
        wait_for(lambda: list(data.glob(".3m_heuristic.h5.*")), 60, "the dataset's temporary file")
        time.sleep(1.0)  # well into writing episodes
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        kill_all(marker)
    assert process.returncode == 130, out[-3000:]
    assert "[2/3]" not in out and "pre-training" not in out, out[-3000:]
    assert list(data.iterdir()) == []  # neither a temporary nor a partial dataset
    assert processes_with(marker) == {}


def test_ctrl_c_while_ovmse_run_starts_its_replay_server_stops_the_run(tmp_path):
    marker = uuid.uuid4().hex
    args = ["run", *SMALL_QMIX_RUN, "--set", f"run.run_dir={tmp_path}", "--set", "run.name=early"]
    process = ovmse(args, marker, tmp_path)
    try:
        read_until(process, r"^ovmse run: .*logs in")
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        kill_all(marker)
    assert process.returncode == 130, out
    assert "did not come up" not in out and "stopping (signal)" in out, out
    wait_for(lambda: not processes_with(marker), 30, "every process of the run to exit")


def test_ctrl_c_stops_ovmse_run_and_every_process_it_started(tmp_path):
    marker = uuid.uuid4().hex
    args = ["run", *SMALL_QMIX_RUN, "--set", f"run.run_dir={tmp_path}", "--set", "run.name=stopped"]
    args += ["--set", "run.online_env_steps=1000000"]
    process = ovmse(args, marker, tmp_path)
    try:
        wait_for(lambda: len(processes_with(marker)) >= 5, 240, "the orchestrator and its 4 processes")
        wait_for(lambda: (tmp_path / "stopped" / "learner_progress.json").exists(), 240, "training")
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 130, out[-3000:]
        assert processes_with(marker) == {}, out[-3000:]
    finally:
        process.kill()
        kill_all(marker)


# --- 5. inputs checked before anything starts; a configuration error is not restarted ----------


def small_config(tmp_path: Path, method: str = "ovmse", *overrides: str):
    return resolve_config(
        map_name="3m", method=method, overrides=[f"run.run_dir={tmp_path}", "run.name=r", *overrides]
    )


def test_run_refuses_a_missing_dataset_before_making_a_run_directory(tmp_path, capsys):
    missing = tmp_path / "nowhere.h5"
    code = cli.main(
        ["run", "--map", "3m", "--set", f"run.dataset={missing}", "--set", f"run.run_dir={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"ovmse run: run.dataset: {missing}: file: no such file (make one with `ovmse dataset collect`)"
    )
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_dataset_of_another_map(tmp_path, capsys):
    from deploy.recipes import CollectRequest, collect_dataset

    other = tmp_path / "2s3z.h5"
    cfg = resolve_config(map_name="2s3z", method="ovmse")
    collect_dataset(cfg, CollectRequest(out=str(other), episodes=4, num_envs=4), progress=False)
    runs = tmp_path / "runs"
    code = cli.main(["run", "--map", "3m", "--set", f"run.dataset={other}", "--set", f"run.run_dir={runs}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"ovmse run: run.dataset: {other}: ") and "map 3m" in err, err
    assert not runs.exists()


def test_run_refuses_an_initial_checkpoint_of_another_map(tmp_path, capsys):
    from deploy.builder import Builder
    from learner.checkpoint import save_checkpoint

    other = tmp_path / "2s3z.pt"
    save_checkpoint(Builder(resolve_config(map_name="2s3z")).learner(), other, map_name="2s3z")
    runs = tmp_path / "runs"
    args = ["run", "--map", "3m", "--method", "qmix", "--set", f"run.init_checkpoint={other}"]
    code = cli.main([*args, "--set", f"run.run_dir={runs}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"ovmse run: run.init_checkpoint: {other}: checkpoint is for map 2s3z, this run is on 3m"
    assert not runs.exists()


def failing(tmp_path: Path, name: str, code: int) -> Child:
    script = f"for i in range(30): print('{name} line', i)\nraise SystemExit({code})"
    return Child(name, [sys.executable, "-c", script], tmp_path / f"{name}.log")


def tended_after_failing(tmp_path: Path, name: str, code: int, monkeypatch) -> tuple[Child, str | None]:
    """A run's only child, exited with `code`, and what the orchestrator's next look at it says."""
    monkeypatch.setattr(embedded, "RESTART_DELAY_S", 0.01)
    run = EmbeddedRun(cfg=None, run_dir=tmp_path)
    child = failing(tmp_path, name, code)
    run.children = {name: child}
    child.start(run.env)
    child.process.wait()
    return child, run._tend(time.monotonic(), learner_done=False)


def test_a_process_that_exits_with_a_configuration_error_is_not_restarted(tmp_path, capsys, monkeypatch):
    learner, reason = tended_after_failing(tmp_path, "learner", 2, monkeypatch)
    assert reason == "learner exited with a configuration error (exit code 2); not restarting it"
    assert learner.starts == 1 and learner.restart_at is None
    err = capsys.readouterr().err
    # Its last lines are shown: the error is there without opening the log.
    assert f"last lines of {learner.log_path}" in err
    assert "learner line 29" in err and "learner line 20" in err and "learner line 19" not in err


def test_a_crashed_process_shows_its_last_log_lines_and_is_restarted(tmp_path, capsys, monkeypatch):
    actor, reason = tended_after_failing(tmp_path, "actor0", 1, monkeypatch)
    assert reason is None  # restarted after a delay
    assert actor.restart_at is not None
    assert "actor0 line 29" in capsys.readouterr().err


def test_a_run_whose_replay_server_fails_on_its_configuration_leaves_no_directory(
    tmp_path, capsys, monkeypatch
):
    cfg = small_config(tmp_path, "qmix")
    run = EmbeddedRun.prepare(cfg)
    assert run.created and run.run_dir.is_dir()
    replay = failing(run.run_dir / "logs", "replay", 2)
    monkeypatch.setattr(run, "plan", lambda: [replay])
    assert run.run(threading.Event()) == 2
    err = capsys.readouterr().err
    assert "ovmse run: replay server exited with a configuration error" in err
    assert "replay line 29" in err  # shown before its log goes with the directory
    assert not run.run_dir.exists()


# --- 7. the demo runs what its options say ------------------------------------------------------


def demo_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["demo", *argv])


def test_the_demo_runs_the_map_method_and_settings_its_options_name(tmp_path):
    plain, _ = demo.demo_config(demo_args())
    assert (plain.env.map_name, plain.learner.method) == ("2s3z", "ovmse")
    assert plain.run.online_env_steps == demo.SETTINGS["run.online_env_steps"]  # the demo's budget

    cfg, settings = demo.demo_config(demo_args("--map", "3m", "--method", "switch_cql"))
    assert (cfg.env.map_name, cfg.learner.method) == ("3m", "switch_cql")
    assert cfg.run.dataset == str(demo.DEMO_DIR / "3m_heuristic.h5") and settings["collect"]
    assert cfg.run.online_env_steps == demo.SETTINGS["run.online_env_steps"]

    cfg, _ = demo.demo_config(demo_args("--map", "3m", "--set", "run.online_env_steps=5000"))
    assert cfg.run.online_env_steps == 5000 and cfg.learner.batch_size == demo.SETTINGS["learner.batch_size"]

    file = tmp_path / "mine.yaml"
    file.write_text("env:\n  map_name: 3m\nlearner:\n  batch_size: 32\n")
    cfg, _ = demo.demo_config(demo_args("--config", str(file)))
    assert cfg.env.map_name == "3m" and cfg.learner.batch_size == 32  # the file's, not the demo's
    cfg, _ = demo.demo_config(demo_args("--config", str(file), "--set", "learner.batch_size=16"))
    assert cfg.learner.batch_size == 16

    qmix, settings = demo.demo_config(demo_args("--method", "qmix"))
    assert qmix.run.dataset is None and not settings["collect"]  # QMIX from scratch: no dataset


def test_the_demo_prints_the_configuration_it_would_run(capsys):
    args = demo_args("--map", "3m", "--set", "run.online_env_steps=5000", "--print-config")
    assert demo.main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["env"]["map_name"] == "3m"
    assert printed["run"]["online_env_steps"] == 5000
    assert printed["learner"]["batch_size"] == demo.SETTINGS["learner.batch_size"]
    assert printed["run"]["dataset"] == str(demo.DEMO_DIR / "3m_heuristic.h5")


# --- 9 and 10. a finished run extended; the status line after a resume --------------------------


def test_the_status_line_rate_counts_only_the_steps_made_since_the_process_started():
    out = io.StringIO()
    line = ProgressLine(50_000, start_steps=10_000, stream=out)
    line.start = time.monotonic() - 2.0  # two seconds in, 200 steps made after the resume
    line.maybe_print(10_200, updates_per_s=1.0)
    rate = float(re.search(r"\| ([\d,.]+) steps/s", out.getvalue())[1].replace(",", ""))
    assert 90 <= rate <= 100, out.getvalue()  # not 10,200 / 2 s


def a_run_directory(tmp_path: Path, steps: int = 0) -> Path:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_config(small_config(tmp_path, "qmix", "run.online_env_steps=1000"), run_dir / "config.yaml")
    if steps:
        (run_dir / "learner_progress.json").write_text(json.dumps({"env_steps": steps, "done": True}))
    return run_dir


def test_resume_refuses_a_key_that_cannot_change_naming_it(tmp_path, capsys):
    run_dir = a_run_directory(tmp_path)
    before = (run_dir / "config.yaml").read_text()
    assert cli.main(["run", "--resume", str(run_dir), "--set", "learner.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovmse run: --set learner.lr: cannot be changed on --resume") and "\n" not in err
    assert "run.online_env_steps" in err  # what can be
    assert (run_dir / "config.yaml").read_text() == before


def test_resume_refuses_a_budget_below_the_steps_already_played(tmp_path, capsys):
    run_dir = a_run_directory(tmp_path, steps=1200)
    assert cli.main(["run", "--resume", str(run_dir), "--set", "run.online_env_steps=1100"]) == 2
    assert "has already played 1,200 online env steps" in capsys.readouterr().err


def test_a_finished_run_is_extended_with_a_larger_budget(tmp_path):
    marker = uuid.uuid4().hex
    args = ["run", *SMALL_QMIX_RUN, "--set", f"run.run_dir={tmp_path}", "--set", "run.name=extended"]
    first = ovmse([*args, "--set", "run.online_env_steps=1000"], marker, tmp_path)
    try:
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, out[-3000:]
    assert "nan" not in out  # before the first evaluation the line shows no win rate
    run_dir = tmp_path / "extended"
    played = json.loads((run_dir / "learner_progress.json").read_text())["env_steps"]

    second = ovmse(["run", "--resume", str(run_dir), "--set", "run.online_env_steps=2000"], marker, tmp_path)
    try:
        out, _ = second.communicate(timeout=600)
    finally:
        second.kill()
        kill_all(marker)
    assert second.returncode == 0, out[-3000:]
    assert f"resuming: {played:,} online env steps" in out
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["online_env_steps"] == 2000
    progress = json.loads((run_dir / "learner_progress.json").read_text())
    assert progress["done"] and progress["env_steps"] >= 2000
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["env_steps"] for r in evals] == sorted(r["env_steps"] for r in evals)
    after = [r for r in evals if r["env_steps"] > played]
    assert after, evals
    # The probe survived the resume: the agreement is logged as before it.
    assert all(r.get("policy_agreement") is not None for r in evals[1:]), evals
    assert len([r for r in records if r["kind"] == "final_eval"]) == 2  # one per end of budget
    # The status lines' rates count this process's steps only: at most what 1,000 steps in the
    # time since the first line allow (the bogus rate counted the resumed steps in the first seconds).
    rates = [float(m.replace(",", "")) for m in re.findall(r"\| ([\d,.]+) steps/s", out)]
    assert rates and max(rates) < 5000, out


# --- 13. no process a test starts outlives it -----------------------------------------------------

SPAWNING_TEST = """
import subprocess, sys, time

def test_starts_a_server(tmp_path):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open({ready!r}, "w").close()
    time.sleep(600)
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_process_a_test_started_dies_when_pytest_is_stopped_from_outside(tmp_path, stop):
    marker = uuid.uuid4().hex
    ready = tmp_path / "ready"
    test_file = tmp_path / "test_spawning.py"
    test_file.write_text(textwrap.dedent(SPAWNING_TEST.format(ready=str(ready))))
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.conftest",
        str(test_file),
    ]
    pytest_run = subprocess.Popen(argv, cwd=ROOT, env=marked_env(marker), stdout=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, 60, "the test to start its server")
        assert len(processes_with(marker)) == 2  # pytest and the server
        pytest_run.send_signal(stop)
        pytest_run.wait(timeout=30)
        wait_for(lambda: not processes_with(marker), 30, "the server to die with pytest")
    finally:
        pytest_run.kill()
        kill_all(marker)


@pytest.mark.slow
def test_the_compose_test_stopped_by_sigterm_leaves_no_process_running(tmp_path):
    marker = uuid.uuid4().hex
    basetemp = tmp_path / "basetemp"
    test = "tests/test_deploy_live.py::test_compose_services_as_local_processes_reach_a_finished_run"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", test]
    pytest_run = subprocess.Popen(argv, cwd=ROOT, env=marked_env(marker), stdout=subprocess.DEVNULL)
    try:

        def replay_server_up() -> bool:
            logs = list(basetemp.glob("*/logs/replay.log"))
            return bool(logs) and "replay server on" in logs[0].read_text(errors="replace")

        wait_for(replay_server_up, 300, "the compose test's replay server to come up", interval_s=1.0)
        assert any("replay-server" in cmd for cmd in processes_with(marker).values())
        pytest_run.send_signal(signal.SIGTERM)  # a CI timeout
        pytest_run.wait(timeout=30)
        # The replay server checkpoints its tables on the way out: give it its time.
        wait_for(lambda: not processes_with(marker), 60, "every process the test started to exit", 1.0)
    finally:
        pytest_run.kill()
        kill_all(marker)
