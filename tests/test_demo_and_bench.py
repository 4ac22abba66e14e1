"""`ovmse demo`, `ovmse bench` and the compose file run real jobs of this project."""

from __future__ import annotations

import yaml

from deploy import bench
from deploy.cli import build_parser
from deploy.studies import demo


def test_demo_runs_the_whole_offline_to_online_story(tmp_path, monkeypatch, capsys):
    """`make demo` at a tenth of its size: dataset, offline pre-training, distributed fine-tuning,
    on the map and with the settings its options name (`ovmse demo --map 3m --set ...`)."""
    monkeypatch.chdir(tmp_path)
    small = {
        "learner.offline_updates": 30,
        "learner.batch_size": 16,
        "run.online_env_steps": 1500,
        "run.eval_interval_steps": 750,
        "actor.test_episodes": 8,
        "actor.final_test_episodes": 16,
    }
    argv = ["demo", "--map", "3m", *(a for k, v in small.items() for a in ("--set", f"{k}={v}"))]
    args = build_parser().parse_args(argv)
    assert demo.main(args, dataset_episodes=80) == 0
    out = capsys.readouterr().out
    assert "on the lite 3m world" in out
    assert "after offline pre-training:  test win rate" in out and "after online fine-tuning:" in out
    assert "online updates over 1,500 env steps" in out
    online = tmp_path / "runs" / "demo" / "online"
    assert (online / "test_win_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "runs" / "demo" / "3m_heuristic.h5").exists()
    assert yaml.safe_load((online / "config.yaml").read_text())["env"]["map_name"] == "3m"


def test_bench_knows_the_world_benchmark_and_rejects_unknown_names(capsys):
    assert "world" in bench.available()
    assert bench.run_benchmark("no_such_thing") == 2
    assert "no benchmark named 'no_such_thing'" in capsys.readouterr().err


def test_every_benchmark_takes_its_arguments_the_way_ovmse_bench_passes_them():
    import importlib.util
    import inspect

    for name in bench.available():
        path = bench.BENCH_DIR / f"bench_{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parameters = list(inspect.signature(module.main).parameters)
        signature = inspect.signature(module.main)
        assert parameters == ["argv"], f"bench_{name}.main{signature}: expected main(argv)"
        assert "--quick" in inspect.getsource(module), f"bench_{name} has no --quick"
