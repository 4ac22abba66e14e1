"""`ovmse reproduce --pretrained-from DIR`: another sweep's finished pre-trainings are taken when the
sweep itself would have shared them (same dataset, offline loss, offline budget, seed and --set
values, whatever the online budget and method), copied whole, and named as this sweep's trials."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.studies.adopt import adopt_pretrainings
from deploy.studies.sweep import Budget, Sweep, is_done, plan, store_sweep

BUDGET = Budget(offline_updates=1200, batch_size=128)


def finished_pretraining(out: Path, sweep: Sweep, weights: bytes = b"weights") -> str:
    """A sweep directory whose one pre-training has finished (its files as a real one lays them out)."""
    store_sweep(out, sweep)
    (name,) = [t.name for t in plan(sweep) if t.kind == "pretrain"]
    run = out / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "offline.pt").write_bytes(weights)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "offline_eval", "win_rate": 0.3}) + "\n")
    done = {"trial": name, "kind": "pretrain", "seed": 0, "method": sweep.methods[0], "win_rate": 0.3}
    (run / "done.json").write_text(json.dumps(done))
    return name


def test_a_one_seed_sweep_s_pre_training_becomes_the_long_sweeps_trial_of_its_seed(tmp_path):
    data = tmp_path / "data.h5"
    data.write_bytes(b"")
    short = tmp_path / "short"  # one seed, seed 1 by --set, a short online budget, another method
    sets = ("learner.precision=auto", "run.offline_eval_interval=200")
    one = Sweep(
        "3m", "medium", ("switch_cql",), 1, 2000, None, str(data), (*sets, "run.seed=1", "env.seed=1"), BUDGET
    )
    source = finished_pretraining(short, one, b"seed one")
    long = tmp_path / "long"
    sweep = Sweep("3m", "medium", ("ovmse", "switch_cql", "qmix"), 2, 200_000, None, str(data), sets, BUDGET)
    store_sweep(long, sweep)

    lines = adopt_pretrainings(long, sweep, [short])

    assert is_done(long, "pretrain/cql_s1") and not is_done(long, "pretrain/cql_s0")
    assert (long / "pretrain/cql_s1/checkpoints/offline.pt").read_bytes() == b"seed one"
    done = json.loads((long / "pretrain/cql_s1/done.json").read_text())
    assert (done["trial"], done["seed"], done["method"]) == ("pretrain/cql_s1", 1, "ovmse")
    assert done["adopted_from"] == {
        "dir": str(short / source),
        "trial": source,
        "seed": 0,
        "method": "switch_cql",
    }
    assert f"pretrain/cql_s1: taken from {short / source}" in lines
    # Seed 0 runs here, and the line says why the nearest candidate was not taken.
    (seed0,) = [line for line in lines if line.startswith("pretrain/cql_s0")]
    assert "runs here" in seed0 and "run.seed 1 (here 0)" in seed0
    assert not list(long.glob("pretrain/.*"))  # no temporary directory left behind


def test_a_pre_training_with_another_setting_or_unfinished_is_not_taken(tmp_path):
    data = tmp_path / "data.h5"
    data.write_bytes(b"")
    sweep = Sweep("3m", "medium", ("ovmse",), 1, 200_000, None, str(data), (), BUDGET)
    store_sweep(tmp_path / "here", sweep)
    heavier = Sweep(
        "3m", "medium", ("ovmse",), 1, 2000, None, str(data), ("learner.offline_cql_weight=1.0",), BUDGET
    )
    finished_pretraining(tmp_path / "heavier", heavier)
    shorter = Sweep(
        "3m", "medium", ("ovmse",), 1, 2000, None, str(data), (), Budget(offline_updates=600, batch_size=128)
    )
    finished_pretraining(tmp_path / "shorter", shorter)
    unfinished = Sweep("3m", "medium", ("ovmse",), 1, 2000, None, str(data), (), BUDGET)
    name = finished_pretraining(tmp_path / "unfinished", unfinished)
    (tmp_path / "unfinished" / name / "done.json").unlink()

    lines = adopt_pretrainings(
        tmp_path / "here", sweep, [tmp_path / d for d in ("heavier", "shorter", "unfinished")]
    )

    assert not is_done(tmp_path / "here", "pretrain/cql_s0")
    assert not (tmp_path / "here" / "pretrain").exists()
    assert len(lines) == 1 and "runs here" in lines[0]
    assert "learner.offline_cql_weight 1.0 (here 0.25)" in lines[0]  # the nearest: one field apart
