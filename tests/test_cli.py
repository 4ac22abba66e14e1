"""The `ovmse` command: `config` prints the resolved configuration, bad configuration exits 2 with one
line and no traceback, and every job that has not landed says so instead of pretending."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from deploy import cli


def ovmse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_config_prints_the_resolved_config_as_yaml():
    done = ovmse(
        "config", "--map", "3s5z", "--dataset-kind", "medium", "--method", "ovmse", "--set", "learner.lr=5e-4"
    )
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert data["replay"]["mixing_ratio"] == 0.1
    assert data["learner"]["lr"] == 5e-4
    assert data["env"]["map_name"] == "3s5z"


def test_a_bad_set_exits_2_with_one_line_and_no_traceback():
    done = ovmse("config", "--set", "replay.mixing_ratio=1.5")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "config error: replay.mixing_ratio: must be in [0, 1], got 1.5\n"


def test_a_bad_config_file_is_named_in_the_error(tmp_path, capsys):
    path = tmp_path / "my.yaml"
    path.write_text("learner:\n  lrr: 0.1\n")
    assert cli.main(["learner", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"config error in {path}: unknown key 'learner.lrr' (did you mean 'learner.lr'?)\n"


def test_python_m_deploy_cli_actor_is_ovmse_actor():
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "actor", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: ovmse actor")
    assert "--dataset-kind" in done.stdout and "--set KEY=VALUE" in done.stdout


@pytest.mark.parametrize(
    "entry", [["deploy.cli", "learner"], ["deploy.cli", "replay-server"], ["deploy"]], ids=" ".join
)
def test_module_entry_points_run_their_subcommand(entry):
    """`python -m deploy.cli ROLE` for each role (the parts have no `__main__`), `python -m deploy` for
    `ovmse run`."""
    done = subprocess.run(
        [sys.executable, "-m", *entry, "--print-config", "--map", "2s3z"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["env"]["map_name"] == "2s3z"


def test_a_job_still_checks_its_configuration_first(capsys):
    assert cli.main(["actor", "--set", "actor.num_actors=0"]) == 2
    assert capsys.readouterr().err == "config error: actor.num_actors: must be >= 1, got 0\n"


def test_print_config_prints_and_exits_without_running_the_job(capsys):
    assert cli.main(["actor", "--map", "6h_vs_8z", "--dataset-kind", "medium_replay", "--print-config"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["learner"]["memory_coef_end"] == 0.05


def test_the_dispatch_table_has_every_job():
    assert set(cli.COMMANDS) == {
        "run",
        "train",
        "pretrain",
        "replay-server",
        "learner",
        "actor",
        "evaluate",
        "export",
        "dataset validate",
        "dataset inspect",
        "dataset collect",
        "dataset convert",
        "dataset particles",
        "reproduce",
        "bench",
        "ray-launch",
        "demo",
        "config",
    }
    args = cli.build_parser().parse_args(["bench", "world", "--quick"])
    assert (args.name, args.quick, args.handler) == ("world", True, cli._bench)


def test_help_is_fast_and_imports_no_framework():
    code = (
        "import sys\n"
        "from deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'reverb', 'ray', 'grpc') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_environment_variables_override_the_file_and_set_overrides_them(monkeypatch, capsys):
    monkeypatch.setenv("OVMSE__replay__address", "replay")
    monkeypatch.setenv("OVMSE__actor__num_actors", "5")
    assert cli.main(["config", "--set", "actor.num_actors=7"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["replay"]["address"] == "replay" and resolved["actor"]["num_actors"] == 7


def test_a_bad_environment_override_names_the_key(monkeypatch, capsys):
    monkeypatch.setenv("OVMSE__replay__mixing_ratio", "2")
    assert cli.main(["config"]) == 2
    assert "replay.mixing_ratio" in capsys.readouterr().err
