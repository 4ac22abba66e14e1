"""`ovmse demo`, `ovmse bench` and the compose file run real jobs of this project."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from common import bench, demo
from common.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def test_demo_plays_both_policies_and_writes_a_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "EPISODES", 32)
    assert demo.main(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert "random" in out and "heuristic" in out and "win rate" in out
    png = tmp_path / "runs" / "demo" / "2s3z_returns.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_knows_the_world_benchmark_and_rejects_unknown_names(capsys):
    assert "world" in bench.available()
    assert bench.run_benchmark("no_such_thing") == 2
    assert "no benchmark named 'no_such_thing'" in capsys.readouterr().err


def test_every_compose_service_runs_a_real_ovmse_command():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]
    for name, service in compose["services"].items():
        command = service["command"]
        assert command[0] in COMMANDS, f"service {name} runs unknown command {command[0]}"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "constraints.txt" in dockerfile and 'ENTRYPOINT ["ovmse"]' in dockerfile
