"""A run that meets crashes keeps going and loses nothing it has checkpointed: the embedded
orchestrator restarts a process that dies (and gives up, in one line, on one that keeps dying);
a killed actor or learner rejoins where the run is; a stopped run resumes with `ovmse run --resume`;
and killing the orchestrator itself leaves no process behind. Real processes and real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import embedded
from deploy.embedded import Child, EmbeddedRun, restart_delay
from learner.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = [
    "--map",
    "3m",
    "--method",
    "qmix",
    "--set",
    "actor.num_actors=2",
    "--set",
    "actor.envs_per_actor=4",
    "--set",
    "learner.batch_size=16",
    "--set",
    "actor.test_episodes=8",
    "--set",
    "actor.final_test_episodes=8",
    "--set",
    "run.eval_interval_steps=1000",
    "--set",
    "run.log_interval_s=1",
    "--set",
    "learner.checkpoint_interval=10",
]


def ovmse(*args: str, **kwargs) -> subprocess.Popen:
    # One torch thread per process: five share two cores, and a learner with two threads waits at
    # every parallel region for a thread whose core another process holds.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def wait_for(condition, timeout_s: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def progress(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "learner_progress.json").read_text())
    except (OSError, ValueError):
        return {}


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def scored_at(run_dir: Path, steps: int) -> bool:
    try:
        return any(r["env_steps"] == steps for r in records(run_dir, "eval"))
    except (OSError, ValueError):  # not written yet, or a line half written
        return False


def pids_running(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (the run's config path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = (entry / "status").read_text().splitlines()
                state = next(line for line in status if line.startswith("State"))
            except (OSError, StopIteration):
                continue
            if marker in cmdline and "Z" not in state.split()[1]:
                found.append(int(entry.name))
    return found


def child_pid(run_dir: Path, job: str) -> int:
    config = str(run_dir / "config.yaml")
    for pid in pids_running(config):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if job.encode() in cmdline:
            return pid
    raise AssertionError(f"no {job} process of {run_dir}")


def test_the_learner_takes_the_cores_its_actors_and_evaluator_leave_and_a_users_setting_wins(
    tmp_path, monkeypatch
):
    from common.config import resolve_config

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert embedded.learner_thread_env({}, 4) == {"OMP_NUM_THREADS": "11", "MKL_NUM_THREADS": "11"}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert embedded.learner_thread_env({}, 2)["OMP_NUM_THREADS"] == "1"  # never fewer than one
    assert embedded.learner_thread_env({"OMP_NUM_THREADS": "4"}, 2) == {}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = resolve_config("3m", method="qmix", overrides=["actor.num_actors=2"])
    plan = {child.name: child for child in EmbeddedRun(cfg, tmp_path).plan()}
    assert plan["learner"].env["OMP_NUM_THREADS"] == "1"
    assert plan["actor0"].env == {} and plan["evaluator"].env == {}  # they set one thread themselves
    script = "import os; print(os.environ['OMP_NUM_THREADS'])"
    child = Child("learner", [sys.executable, "-c", script], tmp_path / "l.log", env={"OMP_NUM_THREADS": "3"})
    child.start({**os.environ, "OMP_NUM_THREADS": "8"})
    child.process.wait(timeout=30)
    assert (tmp_path / "l.log").read_text().strip() == "3"  # the child's own setting over the run's


def test_restart_delays_double_up_to_a_cap():
    assert [restart_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert restart_delay(50) == embedded.RESTART_DELAY_MAX_S


def test_a_stop_signals_every_actor_and_the_evaluator_at_once_then_the_learner_then_the_replay_server(
    tmp_path,
):
    # Each child notes when SIGTERM reached it, then takes a second to wind down, as a checkpoint does.
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    open(sys.argv[1], 'w').write(repr(time.monotonic()))\n"
        "    time.sleep(1.0)\n"
        "    raise SystemExit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "open(sys.argv[1] + '.up', 'w').close()\n"
        "time.sleep(60)\n"
    )
    run = EmbeddedRun(cfg=None, run_dir=tmp_path)
    names = ["actor0", "actor1", "actor2", "evaluator", "learner", "replay"]
    run.children = {
        n: Child(n, [sys.executable, "-c", script, str(tmp_path / n)], tmp_path / f"{n}.log") for n in names
    }
    for child in run.children.values():
        child.start(run.env)
    try:
        wait_for(lambda: all((tmp_path / f"{n}.up").exists() for n in names), 60, "the children to start")
        run.shutdown()
        signalled = {n: float((tmp_path / n).read_text()) for n in names}
    finally:
        for child in run.children.values():
            if child.alive():
                child.process.kill()
    players = [signalled[n] for n in ("actor0", "actor1", "actor2", "evaluator")]
    assert max(players) - min(players) < 0.5  # together, not one after another's second
    assert signalled["learner"] >= max(players) + 0.9  # after the players have stopped
    assert signalled["replay"] >= signalled["learner"] + 0.9


def test_a_process_that_keeps_failing_is_restarted_with_backoff_then_the_run_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "RESTART_DELAY_S", 0.05)
    run = EmbeddedRun(cfg=None, run_dir=tmp_path)
    failing = Child("actor0", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "actor0.log")
    healthy = Child("evaluator", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "e.log")
    run.children = {"actor0": failing, "evaluator": healthy}
    failing.start(run.env)
    healthy.start(run.env)
    try:
        reason, began = None, time.monotonic()
        while reason is None and time.monotonic() - began < 30:
            reason = run._tend(time.monotonic(), learner_done=False)
            time.sleep(0.02)
        limit = embedded.RESTART_LIMIT
        assert reason == f"actor0 failed {limit + 1} times within 600s (last exit code 3); giving up"
        assert failing.starts == embedded.RESTART_LIMIT + 1
        gaps = [b - a for a, b in zip(failing.failures, failing.failures[1:], strict=False)]
        assert all(gap >= 0.05 * 2**i for i, gap in enumerate(gaps))  # each wait at least doubles
        assert healthy.starts == 1 and healthy.alive()
    finally:
        healthy.process.kill()


def test_killing_the_orchestrator_takes_its_processes_with_it(tmp_path):
    orchestrator = ovmse(
        "run",
        *SMALL_RUN,
        "--set",
        f"run.run_dir={tmp_path}",
        "--set",
        "run.name=orphans",
        "--set",
        "run.online_env_steps=1000000",
    )
    run_dir = tmp_path / "orphans"
    marker = str(run_dir / "config.yaml")
    try:
        wait_for(lambda: len(pids_running(marker)) >= 5, what="the run's five processes")
        orchestrator.send_signal(signal.SIGKILL)
        orchestrator.wait()
        wait_for(lambda: not pids_running(marker), timeout_s=60, what="every child to exit")
    finally:
        orchestrator.kill()
        for pid in pids_running(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_actor_replay_server_and_learner_rejoin_and_the_run_finishes_its_budget(tmp_path):
    # The learner is killed past 1,500 steps. Actors outrun the kill sequence (1,500-2,750 steps
    # measured by then, and a loaded 2-core machine has reached 3,000 before it), so the budget
    # leaves the restarted learner steps to update on and versions to publish.
    budget = 5000
    orchestrator = ovmse(
        "run",
        *SMALL_RUN,
        "--set",
        f"run.run_dir={tmp_path}",
        "--set",
        "run.name=crashes",
        "--set",
        f"run.online_env_steps={budget}",
        "--set",
        "replay.checkpoint_interval_s=2",
    )
    run_dir = tmp_path / "crashes"
    try:
        wait_for(lambda: progress(run_dir).get("env_steps", 0) > 500, what="online steps")
        os.kill(child_pid(run_dir, "actor"), signal.SIGKILL)
        wait_for(lambda: (run_dir / "replay_checkpoint" / "reverb").is_dir(), what="a replay checkpoint")
        time.sleep(1.5)
        os.kill(child_pid(run_dir, "replay-server"), signal.SIGKILL)
        wait_for(lambda: (run_dir / "checkpoints" / "learner.pt").exists(), what="a learner checkpoint")
        wait_for(lambda: progress(run_dir).get("env_steps", 0) > 1500, what="more online steps")
        before = progress(run_dir)
        assert not before.get("done"), f"the run reached its budget before the learner was killed: {before}"
        os.kill(child_pid(run_dir, "learner"), signal.SIGKILL)
        time.sleep(0.5)
        last_published = int((run_dir / "published_version").read_text())
        # What the restarted learner must resume from: its last checkpoint (possibly newer than the
        # progress file read above; nothing rewrites it before the restart, a second away).
        _, at_kill, _ = read_checkpoint(run_dir / "checkpoints" / "learner.pt")
        out, _ = orchestrator.communicate(timeout=600)
    finally:
        orchestrator.kill()
    assert orchestrator.returncode == 0, out
    assert "actor0 exited with code -9; restarting" in out or "actor1 exited with code -9; restarting" in out
    assert "learner exited with code -9; restarting" in out
    assert "replay exited with code -9; restarting" in out
    replay_log = (run_dir / "logs" / "replay.log").read_text()
    restored = re.search(r"which had taken (\d+) online episodes; (\d+) inserted after it", replay_log)
    assert restored and int(restored[1]) > 0, replay_log[-2000:]
    learner_log = (run_dir / "logs" / "learner.log").read_text()
    # The learner may also have exited (and been restarted) when the replay server died under one
    # of its sample calls; the last resume is the one after this test's kill.
    resumes = _resumed(learner_log)
    assert resumes, learner_log[-2000:]
    resumed = resumes[-1]
    assert resumed["env_steps"] == at_kill["env_steps"] > 0
    assert resumed["next_version"] > last_published  # actors never see a version go back
    # The step count went on from the checkpoint, not from zero, and not twice over.
    done = progress(run_dir)
    assert done["done"] and budget <= done["env_steps"] < budget + 1500
    # Weights only went forward: every evaluation saw a newer version than the one before.
    versions = [r["policy_version"] for r in records(run_dir, "eval")]
    assert versions == sorted(set(versions)) and versions[-1] > before["version"]
    assert len(records(run_dir, "final_eval")) == 1


def _resumed(log: str) -> list[dict]:
    found = re.findall(r"learner: resumed at ([\d,]+) env steps; next version (\d+)", log)
    return [{"env_steps": int(steps.replace(",", "")), "next_version": int(v)} for steps, v in found]


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    # Stopped once the start is scored and past 500 steps; the budget leaves room for the steps
    # played while it stops (it stood at 720 once stopped, 1,290 before the actors were signalled
    # together, on a loaded 2-core machine).
    budget = 3000
    first = ovmse(
        "run",
        *SMALL_RUN,
        "--set",
        f"run.run_dir={tmp_path}",
        "--set",
        "run.name=stopped",
        "--set",
        f"run.online_env_steps={budget}",
    )
    run_dir = tmp_path / "stopped"
    try:
        # The start's score is on record before the stop: the resumed run must not score it again.
        wait_for(lambda: scored_at(run_dir, 0), what="the evaluation of the starting policy")
        wait_for(lambda: progress(run_dir).get("env_steps", 0) > 500, what="online steps")
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, out
    stopped_at = progress(run_dir)["env_steps"]
    assert stopped_at < budget

    second = ovmse("run", "--resume", str(run_dir))
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    assert f"resuming: {stopped_at:,} online env steps" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped"]  # the same run, not a second one
    done = progress(run_dir)
    assert done["done"] and budget <= done["env_steps"] < budget + 1500
    evals = records(run_dir, "eval")
    assert [r["env_steps"] for r in evals].count(0) == 1  # the start is scored once
    assert [r["env_steps"] for r in evals] == sorted(r["env_steps"] for r in evals)
    assert len(records(run_dir, "final_eval")) == 1

    again = ovmse("run", "--resume", str(run_dir))
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already finished its budget; nothing to resume" in out, out


@pytest.mark.parametrize(
    "extra", [["--map", "3m"], ["--config", "other.yaml"], ["--set", "run.seed=1"], ["--set", "learner.lr=1"]]
)
def test_resume_refuses_what_would_make_it_another_run(tmp_path, extra, capsys):
    from deploy import cli

    (tmp_path / "config.yaml").write_text("{}")
    assert cli.main(["run", "--resume", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    named = extra[1].split("=")[0] if extra[0] == "--set" else extra[0]
    assert len(err.strip().splitlines()) == 1 and f"{named}:" in err  # names the flag or key


def test_resume_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    from deploy import cli

    assert cli.main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_a_restarted_learner_counts_the_steps_of_every_actor_session_once():
    from actors.weight_client import ProgressReporter
    from common.net import pick_free_port
    from learner.weight_service import WeightPublisher

    port = pick_free_port("127.0.0.1")
    crashed = WeightPublisher(port=port)
    dies_too, lives_on = ProgressReporter(crashed.address, 0), ProgressReporter(crashed.address, 1)
    assert dies_too.report(300, 10) and lives_on.report(500, 20)
    saved = crashed.sessions()  # what the learner's checkpoint holds
    crashed.stop()

    restarted = WeightPublisher(port=port)
    try:
        restarted.restore_sessions(saved)
        assert restarted.totals() == (800, 30)
        assert restarted.all_actors_finished()  # the run's end does not wait for sessions gone silent
        # Actor 1 lived through the restart and goes on reporting its running totals.
        assert lives_on.report(650, 26)
        assert restarted.totals() == (950, 36) and not restarted.all_actors_finished()
    finally:
        dies_too.close()
        lives_on.close()
        restarted.stop()


def test_a_learner_restarted_from_an_older_checkpoint_knows_the_newest_version_it_published(tmp_path):
    from learner.process import last_published_version, record_published_version

    assert last_published_version(tmp_path) == 0
    record_published_version(tmp_path, 41)
    record_published_version(tmp_path, 42)
    assert last_published_version(tmp_path) == 42


def test_an_actor_held_back_by_the_replay_throttle_still_stops_on_sigterm(tmp_path):
    import yaml

    from common.config import resolve_config, write_config
    from common.envs.lite import LiteBatchEnv
    from common.net import pick_free_port
    from common.networks import agent_network
    from deploy.builder import Builder
    from learner.weight_service import WeightPublisher
    from replay.tables import ONLINE_TABLE

    publisher = WeightPublisher(port=0)
    cfg = resolve_config(
        map_name="3m",
        method="qmix",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=held",
            f"actor.weight_server={publisher.address}",
            f"replay.port={pick_free_port('127.0.0.1')}",
            "learner.batch_size=8",
            "actor.envs_per_actor=4",
        ],
    )
    server = Builder(cfg).replay_server(dataset=None)
    weights = agent_network(LiteBatchEnv("3m", num_envs=1).get_env_info()).state_dict()
    publisher.publish(weights, 1, extra={"env_steps": 0, "start": True}, start=True)
    write_config(cfg, tmp_path / "held.yaml")
    assert yaml.safe_load((tmp_path / "held.yaml").read_text())["replay"]["port"] == cfg.replay.port
    actor = ovmse("actor", "--actor-id", "0", "--config", str(tmp_path / "held.yaml"))
    try:
        # Nobody samples, so the rate limiter soon stops taking the actor's episodes.
        def held() -> bool:
            first = server.stats()[ONLINE_TABLE].inserts
            time.sleep(3.0)
            return first > 0 and server.stats()[ONLINE_TABLE].inserts == first

        wait_for(held, what="the actor's inserts to be held back")
        actor.send_signal(signal.SIGTERM)
        out, _ = actor.communicate(timeout=30)  # it would wait for a learner that never samples
        assert actor.returncode == 0 and "exiting now" in out, out
    finally:
        actor.kill()
        server.stop()
        publisher.stop()
