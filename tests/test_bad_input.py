"""Bad input is refused before any process starts, in one line naming the key, flag or file; a job
that fails leaves no run directory behind, and a writer stopped by SIGTERM leaves no temporary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError, resolve_config
from common.lifecycle import Terminated, sigterm_raises
from deploy import cli

ROOT = Path(__file__).resolve().parent.parent


def refused(capsys, *argv: str) -> str:
    """Run `ovmse config ARGV`; it must exit 2 with exactly one line on stderr."""
    assert cli.main(["config", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- configuration --------------------------------------------------------------------------------


def test_an_unknown_map_is_refused_at_validation_with_the_list_of_maps(capsys):
    err = refused(capsys, "--set", "env.map_name=nosuchmap")
    assert err.startswith("config error: env.map_name: unknown map 'nosuchmap'")
    assert "3s5z" in err and "so_many_baneling" in err
    assert "did you mean '3s5z'" in refused(capsys, "--map", "3sz5")


def test_a_file_naming_an_unknown_map_is_named(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  map_name: nosuchmap\n")
    assert refused(capsys, "--config", str(path)).startswith(
        f"config error in {path}: env.map_name: unknown map"
    )


def test_grpc_message_sizes_beyond_what_grpc_allows_are_refused(capsys):
    err = refused(capsys, "--set", "run.grpc_max_message_mb=4096")
    assert err == (
        "config error: run.grpc_max_message_mb: must be in [1, 2047] (gRPC's messages are at most "
        "2 GiB - 1 byte), got 4096"
    )
    assert "got 2048" in refused(capsys, "--set", "run.grpc_max_message_mb=2048")
    assert "got 0" in refused(capsys, "--set", "run.grpc_max_message_mb=0")


def test_the_largest_accepted_message_size_works_in_grpc():
    from actors.weight_client import fetch_latest
    from learner.weight_service import WeightPublisher

    cfg = resolve_config(map_name="3m", overrides=["run.grpc_max_message_mb=2047"])
    publisher = WeightPublisher(port=0, max_message_bytes=cfg.run.grpc_max_message_bytes)
    try:
        assert fetch_latest(publisher.address, cfg.run.grpc_max_message_bytes, timeout=5) is None
    finally:
        publisher.stop()


def test_duplicate_keys_in_a_yaml_file_are_refused_naming_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("learner:\n  lr: 0.001\n  batch_size: 8\n  lr: 0.5\n")
    assert refused(capsys, "--config", str(path)) == (
        f"config error in {path}: learner.lr: duplicate key at line 4 (first at line 2); remove one of them"
    )
    sections = tmp_path / "sections.yaml"
    sections.write_text("run:\n  seed: 1\nlearner:\n  lr: 0.001\nrun:\n  seed: 2\n")
    assert "run: duplicate key at line 5 (first at line 1)" in refused(capsys, "--config", str(sections))


def test_duplicate_keys_in_a_toml_file_are_refused(tmp_path, capsys):
    path = tmp_path / "dup.toml"
    path.write_text("[learner]\nlr = 0.001\nlr = 0.5\n")
    err = refused(capsys, "--config", str(path))
    assert err.startswith(f"config error in {path}: invalid TOML")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learner:\n  lr: fast\n", "learner.lr: expected a float, got 'fast'"),
        ("learner:\n  batch_size: 8.5\n", "learner.batch_size: expected an integer, got 8.5"),
        ("run:\n  metrics_port: true\n", "run.metrics_port: expected an integer, got True"),
        ("actor:\n  num_actors: [2]\n", "actor.num_actors: expected an integer, got [2]"),
    ],
)
def test_wrong_types_in_a_file_are_refused_naming_file_and_key(tmp_path, capsys, text, expected):
    path = tmp_path / "typed.yaml"
    path.write_text(text)
    assert refused(capsys, "--config", str(path)) == f"config error in {path}: {expected}"


def test_a_wrong_type_on_the_command_line_names_the_key(capsys):
    assert (
        refused(capsys, "--set", "run.seed=first")
        == "config error: run.seed: expected an integer, got 'first'"
    )


def test_the_resolved_config_is_unchanged_for_good_input():
    cfg = resolve_config(map_name="2s3z", overrides=["run.grpc_max_message_mb=2047"])
    assert cfg.env.map_name == "2s3z" and cfg.run.grpc_max_message_mb == 2047
    with pytest.raises(ConfigError):
        resolve_config(map_name="2s3z", overrides=["env.map_name=2s3zz"])


# --- failed jobs and interrupted writers ----------------------------------------------------------


def test_a_failed_pretrain_leaves_no_run_directory_behind(tmp_path, capsys):
    not_data = tmp_path / "notes.h5"
    not_data.write_text("not a dataset\n")
    argv = [
        "pretrain",
        "--map",
        "3m",
        "--dataset",
        str(not_data),
        "--set",
        f"run.run_dir={tmp_path / 'runs'}",
        "--set",
        "run.name=first",
    ]
    for _ in range(2):  # twice: the second attempt must not go to first_2
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert str(not_data) in err and "Traceback" not in err
        assert not (tmp_path / "runs" / "first").exists()
        assert not (tmp_path / "runs" / "first_2").exists()


def test_a_failed_job_keeps_a_directory_that_holds_a_checkpoint(tmp_path):
    from common.run_log import discarded_on_failure

    kept, removed = tmp_path / "kept", tmp_path / "removed"
    for run_dir, checkpoint in ((kept, True), (removed, False)):
        with pytest.raises(RuntimeError), discarded_on_failure(run_dir):
            (run_dir / "checkpoints").mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text("")
            if checkpoint:
                (run_dir / "checkpoints" / "offline.pt").write_bytes(b"weights")
            raise RuntimeError("the job failed")
    assert kept.is_dir() and not removed.exists()


def test_a_failed_job_says_its_cause_before_the_directory_it_removed(tmp_path, capsys, monkeypatch):
    from common.errors import InputError
    from common.run_log import discarded_on_failure

    def failing_job(args):
        with discarded_on_failure(tmp_path / "run"):
            (tmp_path / "run" / "logs").mkdir(parents=True)
            raise InputError("data.h5: obs: agents is 3, but map 8m has 8")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions:
        action.choices["config"].set_defaults(handler=failing_job)
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ovmse config: data.h5: obs: agents is 3, but map 8m has 8",
        f"removed {tmp_path / 'run'}: the job stopped before saving anything in it",
    ]
    assert not (tmp_path / "run").exists()


def test_a_sigterm_that_lands_in_a_finalizer_still_stops_the_block():
    # Python ignores (prints) an exception raised in a __del__ or a weakref callback: when the
    # signal's handler runs there, the stop must still reach the job's own code.
    class SignalledWhileFinalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    with pytest.raises(Terminated):
        with sigterm_raises():
            SignalledWhileFinalized()  # finalized at once, the signal handled inside __del__
            while time.monotonic() < deadline:  # the job's own loop
                pass
    assert time.monotonic() < deadline, "the loop ran to its end: the stop was lost"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_dataset_collect_stopped_by_sigterm_removes_its_temporary_file(tmp_path):
    out = tmp_path / "data" / "big.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "deploy.cli", "dataset", "collect", "--map", "3m", "--policy", "heuristic"]
    argv += ["--episodes", "1000000", "--out", str(out)]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        temporary: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:
            temporary = list(out.parent.glob(".big.h5.*.tmp")) if out.parent.exists() else []
            if temporary and temporary[0].stat().st_size > 0:
                break
            time.sleep(0.05)
        assert temporary, "the collection never started writing"
        time.sleep(0.5)  # well into writing episodes
        process.send_signal(signal.SIGTERM)
        # About 1 s on an idle machine; once more than 30 s while a 2-core machine also ran other
        # end-to-end tests. 120 s still fails a collection that ignores the signal.
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 143, process.stderr.read().decode()[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no temporary file, no partial file
