"""`ovmse reproduce`: the statistics against hand-computed cases, the plan, and tiny sweeps run for
real (local processes, a killed-and-rerun sweep, and a local Ray instance)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main as cli_main
from deploy.studies.bootstrap import (
    bootstrap_ci,
    iqm,
    median,
    probability_of_improvement,
    probability_of_improvement_ci,
)
from deploy.studies.marl_eval import ABSOLUTE, RunCurve, check_raw_results, raw_results
from deploy.studies.sweep import Budget, Sweep, offline_key, plan, trial_config

ROOT = Path(__file__).resolve().parent.parent

# --- statistics: known cases ---------------------------------------------------------------------


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([0.0, 10.0, 1.0, 2.0, 3.0])) == pytest.approx(2.0)  # drops 0 and 10
    assert iqm(np.array([7.0])) == 7.0
    assert iqm(np.array([[1.0, 100.0], [2.0, 3.0]])) == pytest.approx(2.5)  # all values, flattened


def test_bootstrap_of_two_runs_is_the_enumerable_distribution():
    # The mean of two draws from {0, 1}: 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the 95%
    # percentile interval is [0, 1] and the 50% one is [0.5, 0.5].
    wide = bootstrap_ci(np.array([0.0, 1.0]), np.mean, reps=4000, seed=1)
    assert (wide.point, wide.low, wide.high) == (0.5, 0.0, 1.0)
    narrow = bootstrap_ci(np.array([0.0, 1.0]), np.mean, reps=4000, confidence=0.4, seed=1)
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    constant = bootstrap_ci(np.full(6, 0.3), median)
    assert (constant.low, constant.high) == pytest.approx((0.3, 0.3))


def test_bootstrap_of_the_mean_matches_the_normal_interval_for_many_runs():
    x = np.random.default_rng(0).normal(2.0, 1.0, size=400)
    ci = bootstrap_ci(x, np.mean, reps=3000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert ci.low == pytest.approx(x.mean() - half, abs=0.02)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.02)


def test_stratified_bootstrap_keeps_every_task():
    # Task 0 scores are all 0, task 1 all 1: a resample that dropped a task would move the mean.
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    ci = bootstrap_ci(scores, np.mean, reps=500)
    assert (ci.point, ci.low, ci.high) == (0.5, 0.5, 0.5)


def test_probability_of_improvement_by_hand():
    assert probability_of_improvement(np.array([1.0, 2.0, 3.0]), np.zeros(3)) == 1.0
    assert probability_of_improvement(np.array([0.4, 0.4]), np.array([0.4, 0.4])) == 0.5
    # x = (1, 3), y = (2, 2): pairs 1>2 no, 1>2 no, 3>2 yes, 3>2 yes -> 2 of 4
    assert probability_of_improvement(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    # x = (1, 2, 4), y = (2, 3): 1: 0, 0; 2: tie 0.5, 0; 4: 1, 1 -> 2.5 / 6
    assert probability_of_improvement(np.array([1.0, 2.0, 4.0]), np.array([2.0, 3.0])) == pytest.approx(
        2.5 / 6
    )
    sure = probability_of_improvement_ci(np.array([5.0, 6.0]), np.array([1.0, 2.0]), reps=200)
    assert (sure.point, sure.low, sure.high) == (1.0, 1.0, 1.0)


def test_a_mixing_ratio_study_compares_each_lower_ratio_with_each_higher_one_within_a_method():
    from deploy.studies.report import mixing_ratio_pairs

    labels = ["ovmse_m0.3", "qmix", "ovmse_m0", "switch_cql_m0.5", "ovmse_m0.1", "switch_cql_m0.1", "ovmse"]
    assert mixing_ratio_pairs(labels) == [
        ("ovmse_m0", "ovmse_m0.1"),
        ("ovmse_m0", "ovmse_m0.3"),
        ("ovmse_m0.1", "ovmse_m0.3"),
        ("switch_cql_m0.1", "switch_cql_m0.5"),
    ]


# --- marl-eval's format -------------------------------------------------------------------------------


def test_raw_results_has_marl_evals_shape_and_equal_steps():
    runs = {
        "a": {"seed_0": RunCurve([(10, {"win_rate": 0.5}), (20, {"win_rate": 0.6})], {"win_rate": 0.7})},
        "b": {
            "seed_0": RunCurve([(11, {"win_rate": 0.1}), (21, {"win_rate": 0.2}), (31, {"win_rate": 0.3})])
        },
    }
    data = raw_results("env", "task", runs)
    b = data["env"]["task"]["b"]["seed_0"]
    assert list(b) == ["step_0", "step_1", ABSOLUTE]  # cut to the shortest run
    assert data["env"]["task"]["a"]["seed_0"]["step_1"] == {"step_count": 20, "win_rate": [0.6]}
    assert data["env"]["task"]["a"]["seed_0"][ABSOLUTE] == {"win_rate": [0.7]}
    assert check_raw_results(data) == []
    del data["env"]["task"]["a"]["seed_0"][ABSOLUTE]
    assert any("absolute_metrics" in p for p in check_raw_results(data))


# --- the plan ------------------------------------------------------------------------------------------


def test_one_pretraining_per_offline_loss_and_seed_shared_by_methods():
    sweep = Sweep("2s3z", "medium", ("ovmse", "switch_cql", "macql", "macal_ql", "qmix"), 3, 1000)
    trials = {t.name: t for t in plan(sweep)}
    pretrains = sorted(n for n, t in trials.items() if t.kind == "pretrain")
    assert pretrains == sorted(f"pretrain/{k}_s{s}" for k in ("cql", "cql_calql") for s in range(3))
    assert offline_key("2s3z", "medium", "macal_ql") == "cql_calql"
    for seed in range(3):
        for method in ("ovmse", "switch_cql", "macql"):
            assert trials[f"online/{method}_s{seed}"].needs == (f"pretrain/cql_s{seed}",)
        assert trials[f"online/macal_ql_s{seed}"].needs == (f"pretrain/cql_calql_s{seed}",)
        assert trials[f"online/qmix_s{seed}"].needs == ()
    assert trials["datasets/medium"].needs == ("datasets/behaviour",)
    order = list(trials)
    for name, trial in trials.items():  # every trial after what it needs
        assert all(order.index(n) < order.index(name) for n in trial.needs)


def test_trial_configs_follow_each_preset_and_the_budget(tmp_path):
    sweep = Sweep("2s3z", "medium", ("ovmse", "switch_cql", "qmix"), 1, 20_000, mixing_ratios=(0.0, 0.3))
    trials = {t.name: t for t in plan(sweep)}
    assert "online/ovmse_m0.3_s0" in trials and "online/qmix_s0" in trials  # qmix has no data to mix
    ovmse = trial_config(tmp_path, sweep, trials["online/ovmse_m0.3_s0"])
    assert ovmse.replay.mixing_ratio == 0.3
    assert ovmse.learner.use_offline_value_memory and ovmse.actor.exploration == "decentralized_se"
    assert ovmse.run.init_checkpoint == str(tmp_path / "pretrain/cql_s0/checkpoints/offline.pt")
    assert ovmse.actor.epsilon_anneal_steps == 2000  # the paper's 100k of 1M, scaled to 20k
    assert ovmse.run.eval_interval_steps == 20_000 // Budget().evals
    qmix = trial_config(tmp_path, sweep, trials["online/qmix_s0"])
    assert qmix.run.dataset is None and qmix.run.init_checkpoint is None and qmix.learner.offline_updates == 0
    switch = trial_config(tmp_path, sweep, trials["online/switch_cql_m0_s0"])
    assert switch.learner.online_cql_weight == 0.0 and switch.actor.exploration == "epsilon_greedy"


def test_a_sweep_that_turns_the_cql_term_off_names_its_pre_training_so(tmp_path):
    """The weight-0 control (`--set learner.offline_cql=none`) is not a CQL pre-training: its trial
    and its report row say what it is, and its trial config has no CQL term."""
    sweep = Sweep("3s5z", "medium", ("switch_cql",), 1, 2000, overrides=("learner.offline_cql=none",))
    trials = {t.name: t for t in plan(sweep)}
    assert "pretrain/none_s0" in trials and trials["online/switch_cql_s0"].needs == ("pretrain/none_s0",)
    assert trial_config(tmp_path, sweep, trials["pretrain/none_s0"]).learner.offline_cql == "none"
    plain = Sweep("3s5z", "medium", ("switch_cql",), 1, 2000, overrides=("run.log_interval_s=5",))
    assert "pretrain/cql_s0" in {t.name for t in plan(plain)}


def test_offline_methods_are_their_pre_training_alone_with_no_online_trial(tmp_path):
    methods = ("ovmse", "inspo", "inspo_ovm", "bc", "qmix_cql", "cfcql")
    sweep = Sweep("2s3z", "medium", methods, 2, 20_000)
    trials = {t.name: t for t in plan(sweep)}
    online = sorted(n for n in trials if n.startswith("online/"))
    assert online == [f"online/{m}_s{s}" for m in ("inspo_ovm", "ovmse") for s in (0, 1)]
    keys = {m: offline_key("2s3z", "medium", m) for m in methods}
    # QMIX + CQL is the CQL pre-training OVMSE starts from on 2s3z: one trial for both; InSPO's
    # online fine-tuning starts from InSPO's.
    assert keys == {
        "ovmse": "cql", "inspo": "inspo", "inspo_ovm": "inspo",
        "bc": "bc", "qmix_cql": "cql", "cfcql": "cfcql",
    }  # fmt: skip
    assert trials["online/inspo_ovm_s1"].needs == ("pretrain/inspo_s1",)
    tuned = trial_config(tmp_path, sweep, trials["online/inspo_ovm_s1"])
    assert tuned.learner.algorithm == "inspo" and tuned.learner.use_offline_value_memory
    assert tuned.run.online_env_steps == 20_000 and tuned.actor.exploration == "decentralized_se"
    assert sorted(n for n in trials if n.startswith("pretrain/")) == sorted(
        f"pretrain/{k}_s{s}" for k in ("cql", "inspo", "bc", "cfcql") for s in range(2)
    )
    inspo = trial_config(tmp_path, sweep, trials["pretrain/inspo_s0"])
    assert inspo.learner.algorithm == "inspo" and inspo.run.online_env_steps == 0
    assert inspo.learner.offline_updates == Budget().offline_updates
    bc = trial_config(tmp_path, sweep, trials["pretrain/bc_s1"])
    assert bc.learner.algorithm == "inspo" and bc.learner.offline_updates == 0
    assert bc.learner.behaviour_pretrain_updates > 0 and bc.run.seed == 1
    cfcql = trial_config(tmp_path, sweep, trials["pretrain/cfcql_s0"])
    assert cfcql.learner.offline_cql == "cfcql" and cfcql.learner.algorithm == "qmix"
    assert cfcql.learner.offline_cql_weight > 0


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--methods", "ovmse,nope"], "--methods"),
        (["--seeds", "0"], "--seeds"),
        (["--mixing-ratios", "0.1,2"], "--mixing-ratios"),
        (["--online-steps", "0"], "--online-steps"),
        (["--dataset", "/nonexistent.h5"], "--dataset"),
        (["--jobs", "0"], "--jobs"),
        (["--offline-updates", "-1"], "--offline-updates"),
        (["--method", "ovmse"], "--methods"),
        (["--config", "x.yaml"], "--config"),
        (["--pretrained-from", "/nonexistent-sweep"], "--pretrained-from"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(tmp_path, capsys, extra, flag):
    try:
        code = cli_main(["reproduce", "--map", "3m", "--out", str(tmp_path / "o"), *extra])
    except SystemExit as exit_:  # refused by the parser itself (a count below 1)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
    assert not (tmp_path / "o" / "sweep.json").exists()  # refused before anything is written


def test_a_rerun_with_another_budget_is_refused(tmp_path, capsys):
    from deploy.studies.sweep import store_sweep

    store_sweep(tmp_path, Sweep("3m", "medium", ("ovmse",), 1, 1000))
    store_sweep(tmp_path, Sweep("3m", "medium", ("ovmse", "qmix"), 3, 1000))  # more seeds, methods: fine
    with pytest.raises(ValueError, match="--online-steps"):
        store_sweep(tmp_path, Sweep("3m", "medium", ("ovmse",), 1, 2000))


def test_a_second_sweep_in_the_same_directory_is_refused_while_the_first_runs(tmp_path):
    from deploy.studies.pools import LOCK_FILE, sweep_lock
    from deploy.studies.sweep import ReproduceError

    (tmp_path / LOCK_FILE).write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(ReproduceError, match="another sweep"), sweep_lock(tmp_path):
        pass
    (tmp_path / LOCK_FILE).write_text("not a pid")  # a stale, unreadable lock is taken over
    with sweep_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_table_names_a_dataset_only_where_a_method_uses_one_and_never_a_machines_directory(tmp_path):
    from deploy.studies.report import dataset_lines

    scratch = Sweep("3m", "medium", ("qmix",), 1, 1000)
    assert dataset_lines(tmp_path, scratch) == ["No dataset: every method trains from scratch."]
    assert scratch.title == "lite 3m from scratch"
    made = dataset_lines(tmp_path, Sweep("3m", "medium", ("ovmse",), 1, 1000))
    assert made == ["Dataset: `datasets/3m_medium.h5` (no card)."]  # within --out
    given = Sweep("3m", "medium", ("ovmse",), 1, 1000, dataset=str(tmp_path.parent / "elsewhere" / "d.h5"))
    assert dataset_lines(tmp_path, given) == ["Dataset: `d.h5` (no card)."]


# --- tiny sweeps, run for real ---------------------------------------------------------------------

TINY = [
    "--map", "3m", "--dataset-kind", "medium", "--seeds", "2", "--online-steps", "400",
    "--behaviour-max-steps", "300", "--behaviour-win-rate", "0", "--dataset-episodes", "24",
    "--offline-updates", "4", "--batch-size", "8", "--evals", "2", "--test-episodes", "4",
    "--final-test-episodes", "8",
]  # fmt: skip
METHODS = "ovmse,switch_cql,qmix"


def reproduce(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in its own session, so that a timeout ends it together with its trials."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "deploy.cli", "reproduce", *TINY, "--out", str(out), *extra]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def records(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def done_times(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*/done.json")}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reproduce") / "local"
    result = reproduce(out, "--methods", METHODS, "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_tiny_sweep_writes_every_output_from_the_runs_own_numbers(sweep_dir):
    out = sweep_dir
    for name in ("results.json", "table.md", "summary.json", "curves_win_rate.png", "curves_return.png",
                 "curves_probe.png", "datasets/3m_medium.h5", "datasets/3m_medium.card.json",
                 "datasets/3m_medium_replay.h5", "datasets/3m_medium_replay.card.json"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    card = json.loads((out / "datasets/3m_medium.card.json").read_text())
    assert card["episodes"] == 24 and card["kind"] == "medium" and "behaviour_test_win_rate" in card
    # Paths relative to --out: a card copied into docs/ names no directory of the machine it came from.
    assert card["path"] == "datasets/3m_medium.h5"
    assert card["policy"] == "checkpoint:datasets/behaviour/checkpoints/final.pt"
    # One pre-training per seed, shared by OVMSE and Switch CQL.
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["cql_s0", "cql_s1"]
    # A finished trial keeps its final weights, not its resume state (large on big maps).
    assert sorted(p.name for p in (out / "pretrain/cql_s0/checkpoints").iterdir()) == ["offline.pt"]
    assert not list(out.glob("online/*/checkpoints/trainer.pt")) and list(
        out.glob("online/*/checkpoints/final.pt")
    )

    data = json.loads((out / "results.json").read_text())
    assert check_raw_results(data) == []
    algorithms = data["smac_lite"]["3m_medium"]
    assert sorted(algorithms) == ["ovmse", "qmix", "switch_cql"]
    for algorithm, runs in algorithms.items():
        assert sorted(runs) == ["seed_0", "seed_1"]
        for seed, steps in runs.items():
            run_dir = out / "online" / f"{algorithm}_s{seed[-1]}"
            evals = records(run_dir, "eval")  # the starting policy at step 0, then the online ones
            final = records(run_dir, "final_eval")[-1]
            names = [k for k in steps if k != ABSOLUTE]
            assert len(names) == 3 and evals[0]["env_steps"] == 0  # marl-eval's curves show the drop
            for i, name in enumerate(names):
                assert steps[name]["step_count"] == evals[i]["env_steps"]
                assert steps[name]["win_rate"] == [evals[i]["win_rate"]]
                assert steps[name]["return"] == [pytest.approx(evals[i]["return"])]
            assert steps[ABSOLUTE] == {
                "win_rate": [final["win_rate"]],
                "return": [pytest.approx(final["return"])],
            }
            assert final["episodes"] == 8

    summary = json.loads((out / "summary.json").read_text())
    table = (out / "table.md").read_text()
    for algorithm in ("ovmse", "switch_cql", "qmix"):
        finals = [records(out / "online" / f"{algorithm}_s{s}", "final_eval")[-1]["win_rate"] for s in (0, 1)]
        row = summary["rows"][algorithm]
        assert row["final_win_rate"] == finals
        assert row["median"]["point"] == pytest.approx(float(np.median(finals)))
        assert row["iqm"]["point"] == pytest.approx(float(np.mean(finals)))  # two runs: nothing trimmed
        line = next(x for x in table.splitlines() if x.startswith(f"| {algorithm} | 2 |"))
        assert f"{np.median(finals):.3f} [" in line
        per_seed = next(x for x in table.splitlines() if x.startswith(f"| {algorithm} | ") and "[" not in x)
        assert per_seed == f"| {algorithm} | {finals[0]:.3f} | {finals[1]:.3f} |"
        if algorithm != "qmix":  # the offline-to-online drop: from the run's own step-0 evaluation
            run = out / "online" / f"{algorithm}_s0"
            evals = records(run, "eval")
            drop = min(e["return"] for e in evals[1:4]) - evals[0]["return"]
            assert row["drop"][0] == pytest.approx(drop)
    assert summary["rows"]["qmix"]["drop"] == []
    x = np.array(summary["rows"]["ovmse"]["final_win_rate"])
    y = np.array(summary["rows"]["switch_cql"]["final_win_rate"])
    assert summary["improvements"]["ovmse > switch_cql"]["point"] == probability_of_improvement(x, y)
    assert "| ovmse > qmix |" in table


def test_a_killed_sweep_reruns_only_what_was_missing(sweep_dir, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(sweep_dir, out)
    missing = ["online/ovmse_s1", "online/switch_cql_s1", "online/qmix_s1"]
    for name in missing:
        (out / name / "done.json").unlink()
    before = done_times(out)
    # Start the sweep, kill it (and its trials) as soon as one of the missing trials has finished.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "deploy.cli", "reproduce", *TINY, "--methods", METHODS, "--jobs", "1"]
    process = subprocess.Popen(
        [*command, "--out", str(out)], env=env, cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((out / n / "done.json").exists() for n in missing):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_before_kill = [n for n in missing if (out / n / "done.json").exists()]
    assert 1 <= len(finished_before_kill) < len(missing)
    kept = done_times(out)

    result = reproduce(out, "--methods", METHODS, "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    left = len(missing) - len(finished_before_kill)
    assert f"{10 - left} already finished, {left} to run" in result.stdout
    after = done_times(out)
    assert set(after) == set(before) | set(missing)
    for name, stamp in kept.items():  # nothing finished was run again
        assert after[name] == stamp, name
    for name in missing:
        assert records(out / name, "final_eval")
    again = reproduce(out, "--methods", METHODS, "--jobs", "2")
    assert "0 to run" in again.stdout and done_times(out) == after


def test_the_same_sweep_as_ray_tasks_on_a_local_instance(sweep_dir, tmp_path):
    import ray  # noqa: F401  (a required package: the test fails, not skips, without it)

    out = tmp_path / "ray"
    dataset = sweep_dir / "datasets" / "3m_medium.h5"
    result = reproduce(out, "--methods", "ovmse,qmix", "--ray", "local", "--dataset", str(dataset))
    assert result.returncode == 0, result.stdout + result.stderr
    trials = sorted(str(p.parent.relative_to(out)) for p in out.glob("*/*/done.json"))
    assert trials == ["online/ovmse_s0", "online/ovmse_s1", "online/qmix_s0", "online/qmix_s1",
                      "pretrain/cql_s0", "pretrain/cql_s1"]  # fmt: skip
    tasks = {json.loads((out / t / "done.json").read_text())["ray_task_id"] for t in trials}
    assert None not in tasks and "" not in tasks and len(tasks) == len(trials)  # one Ray task each
    local = json.loads((sweep_dir / "online/ovmse_s0/done.json").read_text())
    assert local["ray_task_id"] is None
    for name in ("results.json", "table.md", "summary.json", "curves_win_rate.png", "curves_return.png",
                 "curves_probe.png"):  # fmt: skip
        assert (out / name).is_file()
    data = json.loads((out / "results.json").read_text())
    assert check_raw_results(data) == []
    local_data = json.loads((sweep_dir / "results.json").read_text())
    ours, theirs = data["smac_lite"]["3m_medium"], local_data["smac_lite"]["3m_medium"]
    assert list(ours) == ["ovmse", "qmix"]
    for algorithm in ours:  # the same schema: runs, steps, metrics
        for seed in ours[algorithm]:
            assert ours[algorithm][seed].keys() == theirs[algorithm][seed].keys()
            assert ours[algorithm][seed]["step_0"].keys() == theirs[algorithm][seed]["step_0"].keys()
    # QMIX from scratch reads no dataset: the same seed repeats bit for bit wherever it ran.
    assert ours["qmix"] == theirs["qmix"]


def test_an_offline_comparison_reports_each_pre_training_from_its_own_evaluation(sweep_dir, tmp_path):
    out = tmp_path / "offline"
    dataset = sweep_dir / "datasets" / "3m_medium.h5"
    result = reproduce(
        out, "--methods", "inspo,bc,cfcql", "--dataset", str(dataset), "--jobs", "2",
        "--set", "learner.behaviour_pretrain_updates=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (out / "online").exists()
    summary = json.loads((out / "summary.json").read_text())["offline"]
    table = (out / "table.md").read_text()
    assert "## Offline pre-training" in table
    assert table.startswith("# lite 3m medium: inspo, bc, cfcql\n")
    assert "final win rate, median" not in table  # no online trial: no (empty) online table
    for key in ("inspo", "bc", "cfcql"):
        finals = [records(out / "pretrain" / f"{key}_s{s}", "eval")[-1] for s in (0, 1)]
        assert all(f["episodes"] == 8 for f in finals)  # --final-test-episodes
        wins = [f["win_rate"] for f in finals]
        row = summary["rows"][key]
        assert row["win_rate"] == wins and row["seeds"] == [0, 1]
        assert row["return"] == [pytest.approx(f["return"]) for f in finals]
        assert row["median"]["point"] == pytest.approx(float(np.median(wins)))
        line = next(x for x in table.splitlines() if x.startswith(f"| {key} | 2 |"))
        assert line.endswith(f"| {wins[0]:.3f}, {wins[1]:.3f} |")
    bc_log = records(out / "pretrain" / "bc_s0", "behaviour")
    assert bc_log and not records(out / "pretrain" / "bc_s0", "offline")  # cloning, no policy updates
    x = np.array(summary["rows"]["inspo"]["win_rate"])
    y = np.array(summary["rows"]["bc"]["win_rate"])
    assert summary["improvements"]["inspo > bc"]["point"] == probability_of_improvement(x, y)


def test_progress_line_counts_done_running_left_and_estimates_the_rest(tmp_path):
    from deploy.studies.runner import Progress

    sweep = Sweep("3m", "medium", ("ovmse", "qmix"), 2, 1000)
    trials = plan(sweep)  # behaviour, medium, 2 pretrains, 4 online
    assert len(trials) == 8
    for name, seconds in (("datasets/behaviour", 100), ("online/qmix_s0", 60), ("online/qmix_s1", 40)):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "done.json").write_text(json.dumps({"seconds": seconds}))
    line = Progress(trials, parallelism=2).line(tmp_path, {"datasets/medium", "online/qmix_s1"}, set())
    # qmix_s1 finished but not yet reaped: done, not running. Left: 2 pretrains (no pretrain has
    # finished: the mean of all finished trials, 200 / 3 s) and 2 online trials (their kind's mean,
    # 50 s); medium, running, counts half of 200 / 3 s; all over 2 parallel slots.
    expected = (2 * 200 / 3 + 2 * 50 + 0.5 * 200 / 3) / 2
    assert line.startswith("reproduce: 3/8 trials done, 1 running, 4 left; ETA ")
    assert line.endswith(f"ETA {int(expected) // 60}m{int(expected) % 60:02d}s")


def test_report_only_rewrites_the_results_from_the_trials(sweep_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(sweep_dir, out)
    for name in ("results.json", "table.md", "summary.json", "curves_win_rate.png"):
        (out / name).unlink()
    assert cli_main(["reproduce", "--report-only", "--out", str(out)]) == 0
    assert "| ovmse | 2 |" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == json.loads(
        (sweep_dir / "results.json").read_text()
    )
    assert (out / "curves_win_rate.png").is_file() and (out / "table.md").is_file()
    assert cli_main(["reproduce", "--report-only", "--out", str(tmp_path / "none")]) == 2


def test_sweeps_of_two_tasks_merge_into_one_multi_task_file_and_a_repeated_task_is_refused():
    from deploy.studies.marl_eval import merge_raw_results

    curve = {"seed_0": RunCurve([(0, {"win_rate": 0.1}), (10, {"win_rate": 0.2})], {"win_rate": 0.3})}
    a = raw_results("smac_lite", "3s5z_medium", {"ovmse": curve, "qmix": curve})
    b = raw_results("smac_lite", "2s3z_medium", {"ovmse": curve, "qmix": curve})
    merged = merge_raw_results([a, b])
    assert sorted(merged["smac_lite"]) == ["2s3z_medium", "3s5z_medium"]
    assert check_raw_results(merged) == []
    with pytest.raises(ValueError, match="3s5z_medium is in two"):
        merge_raw_results([a, b, a])
