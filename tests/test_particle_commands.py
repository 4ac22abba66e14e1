"""The `ovmse` commands on the particle world (simple_spread): `--map simple_spread` sends pretrain,
evaluate and reproduce to the continuous offline methods of `learner/continuous_registry.py`;
every SMAC map keeps its own path, and a method or option of the other kind is refused in one line
naming --method, --map or the option. Tiny datasets and budgets: each test is about the commands,
not about how well the methods learn."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from deploy import cli
from deploy.studies import particle_commands, particle_sweep
from deploy.studies.marl_eval import check_raw_results
from deploy.studies.particle_datasets import ParticleDatasetConfig
from learner.continuous_registry import CONTINUOUS_METHODS, ContinuousOfflineLearner, DatasetShape, PhaseSteps
from tests.particle_support import write_random_dataset

# A few dozen updates at batch 32, evaluations on 4 episodes, the final policy on 8.
TINY = [
    "--behaviour-steps=6",
    "--critic-steps=6",
    "--actor-steps=8",
    "--eval-interval=4",
    "--eval-episodes=4",
    "--final-episodes=8",
]


def write_dataset(path, kind: str = "expert", map_name: str = "simple_spread") -> str:
    return write_random_dataset(path, kind, map_name)


def rewrite_card(path: str, changes: dict) -> None:
    import h5py

    with h5py.File(path, "r+") as h5:
        h5.attrs["card"] = json.dumps({**json.loads(h5.attrs["card"]), **changes})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory holding data/simple_spread_{expert,medium}.h5, as the current directory."""
    (tmp_path / "data").mkdir()
    for kind in ("expert", "medium"):
        write_dataset(tmp_path / "data" / f"simple_spread_{kind}.h5", kind)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ovmse(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


# --- the registry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONTINUOUS_METHODS))
def test_every_registered_method_builds_a_learner_that_checkpoints_to_plain_tensors(name, tmp_path):
    method = CONTINUOUS_METHODS[name]
    shape = DatasetShape(3, 18, 54, 5, 0.0, 1.0)
    learner = method.build(shape, method.configure(None, PhaseSteps(1, 1, 1, 8)), 0)
    assert isinstance(learner, ContinuousOfflineLearner)
    torch.save(learner.state_dict(), tmp_path / "state.pt")
    learner.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    actions = method.load_policy(
        method.policy_shape(shape, method.configure(None, PhaseSteps(1, 1, 1, 8))),
        learner.policy_state_dict(),
    )(np.zeros((2, 3, 18), np.float32))
    assert actions.shape == (2, 3, 5) and ((actions >= 0) & (actions <= 1)).all()


# --- pretrain and evaluate ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["omsd", "bc"])
def test_pretrain_then_evaluate_gives_the_saved_policys_score(workdir, capsys, method):
    code, out, err = ovmse(
        capsys, "pretrain", "--map", "simple_spread", "--method", method, "--dataset-kind", "expert",
        "--seed", "2", "--out", "runs/p", "--batch-size=32", *(TINY if method == "omsd" else TINY[2:]),
    )  # fmt: skip
    assert code == 0, err
    assert "ETA" in out and "policy in runs/p/agent.pt" in out
    done = json.loads((workdir / "runs/p/done.json").read_text())
    assert (done["method"], done["seed"], done["kind"], done["final_episodes"]) == (method, 2, "expert", 8)

    code, out, err = ovmse(capsys, "evaluate", "--checkpoint", "runs/p/agent.pt", "--episodes", "8")
    assert code == 0, err
    result = last_json(out)
    assert result["return"] == done["final_return"] and result["score"] == done["final_score"]
    assert result["score_ci95"] == pytest.approx(done["final_score_ci95"]) and result["episodes"] == 8
    assert "normalised score" in out and "95% intervals" in out


# behaviour cloning pre-trained into p/ at the tiny budget
PRETRAIN_BC = ["pretrain", "--map", "simple_spread", "--method", "bc", "--out", "p"]
PRETRAIN_BC += ["--batch-size=32", *TINY[2:]]


def test_the_saved_policy_is_tensors_and_plain_values(workdir, capsys):
    ovmse(capsys, *PRETRAIN_BC)
    payload = torch.load(workdir / "p" / "agent.pt", weights_only=True)
    assert payload["kind"] == "ovmse-particle-policy" and payload["identity"]["method"] == "bc"
    assert payload["identity"]["dataset_kind"] == "medium"  # the default kind
    assert all(isinstance(v, torch.Tensor) for v in payload["weights"].values())


def test_a_rerun_pretrain_goes_on_and_other_settings_in_the_same_out_are_refused(workdir, capsys):
    args = PRETRAIN_BC
    assert ovmse(capsys, *args)[0] == 0
    code, out, _ = ovmse(capsys, *args)
    assert code == 0 and "actor steps" not in out  # finished: nothing trained again
    code, _, err = ovmse(capsys, *args[:-1], "--final-episodes=16")
    assert code == 2 and err.startswith(
        "ovmse pretrain: --out p: holds a pretrain with other settings (budget"
    )


def test_a_missing_dataset_names_the_flag_the_path_and_how_to_make_it(workdir, capsys):
    code, _, err = ovmse(
        capsys, "pretrain", "--map", "simple_spread", "--method", "omsd", "--dataset-kind", "random"
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "--dataset-kind random: no dataset at data/simple_spread_random.h5" in err
    assert "ovmse dataset particles --out data" in err
    code, _, err = ovmse(capsys, "pretrain", "--map", "simple_spread", "--dataset", "nope.h5")
    assert code == 2 and err.strip() == "ovmse pretrain: --dataset nope.h5: no such file"


def test_a_dataset_of_another_kind_or_map_is_refused_naming_it(workdir, capsys):
    code, _, err = ovmse(
        capsys, "pretrain", "--map", "simple_spread", "--dataset", "data/simple_spread_medium.h5",
        "--dataset-kind", "expert",
    )  # fmt: skip
    assert code == 2 and "--dataset-kind expert: " in err and "holds a 'medium' dataset" in err
    write_dataset(workdir / "other.h5", map_name="simple_tag")
    code, _, err = ovmse(capsys, "pretrain", "--map", "simple_spread", "--dataset", "other.h5")
    assert code == 2 and "the card's map is 'simple_tag'" in err


def test_a_smac_method_on_simple_spread_is_refused_naming_method(workdir, capsys):
    for command, method in (("pretrain", "ovmse"), ("evaluate", "qmix")):
        code, _, err = ovmse(capsys, command, "--method", method, "--map", "simple_spread")
        assert code == 2 and len(err.splitlines()) == 1
        assert err.startswith(f"ovmse {command}: --method: {method!r} is not a method for simple_spread")
    code, _, err = ovmse(capsys, "reproduce", "--map", "simple_spread", "--methods", "bc,qmix")
    assert code == 2 and "--methods: 'qmix' is not a method for simple_spread" in err


def test_omsd_on_a_smac_map_is_refused_naming_map(workdir, capsys):
    code, _, err = ovmse(capsys, "pretrain", "--method", "omsd", "--map", "2s3z")
    assert code == 2 and err.strip() == (
        "ovmse pretrain: --map 2s3z: omsd is a particle-world method; add --map simple_spread "
        "(particle worlds: simple_spread)"
    )
    code, _, err = ovmse(capsys, "pretrain", "--method", "matd3_bc")  # the default map, 3s5z
    assert code == 2 and "--map (default 3s5z): matd3_bc is a particle-world method" in err
    code, _, err = ovmse(capsys, "reproduce", "--methods", "ovmse,omsd", "--map", "3s5z")
    assert code == 2 and "--map 3s5z: omsd is a particle-world method" in err


def test_a_particle_option_on_a_smac_map_is_refused_naming_it(workdir, capsys):
    code, _, err = ovmse(capsys, "pretrain", "--map", "2s3z", "--actor-steps", "5")
    assert (
        code == 2
        and err.strip()
        == "ovmse pretrain: --actor-steps: a particle-world option; it needs --map simple_spread"
    )


def test_evaluate_refuses_what_is_not_a_saved_particle_policy(workdir, capsys):
    torch.save({"w": torch.zeros(2)}, workdir / "plain.pt")
    code, _, err = ovmse(capsys, "evaluate", "--map", "simple_spread", "--checkpoint", "plain.pt")
    assert code == 2 and "--checkpoint plain.pt: not a particle-world policy" in err
    code, _, err = ovmse(capsys, "evaluate", "--map", "simple_spread")
    assert code == 2 and err.startswith(
        "ovmse evaluate: --checkpoint: evaluating on simple_spread needs a saved"
    )


# --- reproduce -----------------------------------------------------------------------------------------

SWEEP = [
    "reproduce", "--map", "simple_spread", "--dataset-kind", "medium", "--batch-size", "32",
    "--behaviour-steps=2", "--critic-steps=2", *TINY[2:],
]  # fmt: skip


def test_reproduce_writes_marl_eval_results_a_table_with_intervals_and_curves(workdir, capsys):
    code, out, err = ovmse(
        capsys, *SWEEP, "--methods", "bc,omsd", "--seeds", "2", "--jobs", "1", "--out", "s"
    )
    assert code == 0, err
    assert "4/4 trials finished" in out and "ETA" in out
    results = json.loads((workdir / "s/results.json").read_text())
    assert check_raw_results(results) == []
    runs = results["mpe"]["simple_spread_medium"]
    assert sorted(runs) == ["bc", "omsd"] and sorted(runs["omsd"]) == ["seed_0", "seed_1"]
    done = json.loads((workdir / "s/omsd_s1/done.json").read_text())
    assert runs["omsd"]["seed_1"]["absolute_metrics"]["score"] == [done["final_score"]]
    assert runs["omsd"]["seed_1"]["step_1"] == {"step_count": 8, "score": [done["curve"][1]["score"]],
                                                "return": [done["curve"][1]["return"]]}  # fmt: skip
    table = (workdir / "s/table.md").read_text()
    assert "| method | seeds | score, median | score, IQM |" in table
    row = next(line for line in table.splitlines() if line.startswith("| omsd | 2 |"))
    assert row.count("[") >= 3  # median, IQM and mean return, each with its interval
    assert "omsd > bc" in table
    assert (workdir / "s/curves_score.png").read_bytes()[:4] == b"\x89PNG"


def test_a_killed_reproduce_reruns_only_the_missing_trials(workdir, capsys, monkeypatch):
    say = particle_sweep.say

    def killed_in_bc_s1(line: str) -> None:
        say(line)
        if line.startswith("bc s1: 4/8 actor steps"):  # after its first evaluation saved state.pt
            raise KeyboardInterrupt

    monkeypatch.setattr(particle_sweep, "say", killed_in_bc_s1)
    args = SWEEP
    code, _, _ = ovmse(capsys, *args, "--methods", "bc", "--seeds", "3", "--jobs", "1", "--out", "s")
    assert code == 130
    assert (workdir / "s/bc_s0/done.json").exists() and (workdir / "s/bc_s1/state.pt").exists()
    assert not (workdir / "s/bc_s2").exists()
    first_done = (workdir / "s/bc_s0/done.json").stat().st_mtime_ns

    monkeypatch.setattr(particle_sweep, "say", say)
    code, out, err = ovmse(capsys, *args, "--methods", "bc", "--seeds", "3", "--jobs", "1", "--out", "s")
    assert code == 0, err
    assert "1 finished already, 2 to run" in out
    assert "bc s0:" not in out  # finished: not run again
    assert "bc s1: 4/8" not in out and "bc s1: 8/8 actor steps" in out  # went on from its state.pt
    assert "bc s2: 4/8" in out
    assert (workdir / "s/bc_s0/done.json").stat().st_mtime_ns == first_done
    runs = json.loads((workdir / "s/results.json").read_text())["mpe"]["simple_spread_medium"]["bc"]
    assert sorted(runs) == ["seed_0", "seed_1", "seed_2"]
    assert ovmse(capsys, *args, "--methods", "bc", "--seeds", "2", "--jobs", "1", "--out", "straight")[0] == 0
    straight = json.loads((workdir / "straight/bc_s1/done.json").read_text())
    assert json.loads((workdir / "s/bc_s1/done.json").read_text()) == straight  # as if never stopped


@pytest.mark.slow  # a child process importing torch: seconds on an idle machine, more on a busy one
def test_reproduce_with_jobs_runs_trials_as_processes_with_logs(workdir, capsys):
    code, out, err = ovmse(capsys, *SWEEP, "--methods", "bc", "--seeds", "1", "--jobs", "2", "--out", "s")
    assert code == 0, err
    assert "1/1 trials finished (bc_s0: score" in out
    assert (
        json.loads((workdir / "s/bc_s0/done.json").read_text())["final_episodes"] == 8
    )  # the sweep's budget
    assert "bc s0: 8/8 actor steps" in (workdir / "s/logs/bc_s0.log").read_text()


def test_reproduce_refuses_another_budget_in_the_same_out_and_smac_options(workdir, capsys):
    assert ovmse(capsys, *SWEEP, "--methods", "bc", "--seeds", "1", "--out", "s", "--jobs", "1")[0] == 0
    code, _, err = ovmse(
        capsys, *SWEEP[:-1], "--final-episodes=16", "--methods", "bc", "--seeds", "1", "--out", "s"
    )
    assert code == 2 and err.startswith(
        "ovmse reproduce: --out s: holds a particle sweep with other settings"
    )
    code, _, err = ovmse(capsys, *SWEEP, "--online-steps", "100", "--out", "s")
    assert code == 2 and err.startswith("ovmse reproduce: --online-steps: a SMAC sweep's option")


# --- datasets and bench ----------------------------------------------------------------------------


def test_the_budget_flags_defaults_are_the_trials_and_omsds():
    from deploy.studies.particle_offline import OfflineBudget
    from learner.omsd_learner import OMSDConfig

    shown = {name: default for _, name, _, _, default in particle_commands.BUDGET_FLAGS}
    shown[particle_commands.BATCH_FLAG[1]] = particle_commands.BATCH_FLAG[4]
    assert shown == dataclasses.asdict(OfflineBudget())
    assert particle_commands.BETA_FLAG[4] == OMSDConfig().beta


def test_the_dataset_commands_flags_are_the_dataset_makers_config():
    defaults = {f.name: f.default for f in dataclasses.fields(ParticleDatasetConfig)}
    assert {name: default for name, (_, default, _) in particle_commands.DATASET_FLAGS.items()} == defaults


def test_dataset_particles_makes_the_files_dataset_kind_finds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = ovmse(
        capsys, "dataset", "particles", "--out", "data", "--env-steps", "1000", "--transitions", "200",
        "--eval-interval", "500", "--score-episodes", "8", "--num-envs", "8", "--warmup", "200",
        "--batch-size", "32",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "data").glob("*.h5")) == [
        f"simple_spread_{k}.h5" for k in ("expert", "medium", "medium_replay", "mixed", "random")
    ]
    # 1,000 steps make no expert: the maker says so, and --dataset-kind finds the file and refuses it.
    assert "warning: the expert's return" in out and "does not beat random's" in out
    code, _, err = ovmse(
        capsys, "pretrain", "--map", "simple_spread", "--method", "bc", "--dataset-kind", "random",
        "--batch-size=32", *TINY[2:],
    )  # fmt: skip
    assert code == 2 and "--dataset-kind random data/simple_spread_random.h5: card.expert_return" in err


@pytest.mark.parametrize(
    "card, key",
    [
        ({"random_return": -40.0, "expert_return": -40.0}, "card.expert_return: -40.00 does not beat"),
        ({"random_return": float("nan")}, "card.random_return: nan"),
        ({"random_return": None}, "card.random_return: None"),
    ],
)
def test_a_card_that_cannot_score_a_policy_is_refused_before_any_trial(workdir, capsys, card, key):
    path = write_random_dataset(workdir / "unscored.h5", "medium")
    rewrite_card(path, card)
    for command in ("pretrain", "reproduce"):
        code, _, err = ovmse(capsys, command, "--map", "simple_spread", "--dataset", path, *TINY)
        assert code == 2 and len(err.strip().splitlines()) == 1 and key in err, err
    assert not (workdir / "runs").exists()  # refused before anything was written


def test_ovmse_bench_omsd_times_the_diffusion_critic_and_actor_updates(tmp_path, monkeypatch, capsys):
    import importlib.util

    from deploy import bench

    assert "omsd" in bench.available() and "batch 512" in bench.summary("omsd")
    spec = importlib.util.spec_from_file_location("bench_omsd", bench.BENCH_DIR / "bench_omsd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "pin_to_one_core", lambda: "not pinned (test)")  # not this process
    threads = torch.get_num_threads()
    try:
        assert module.main(["--repeats", "1", "--batch", "8", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    table = (tmp_path / "omsd.md").read_text()
    for row in (
        "| behaviour (every agent's diffusion model) |",
        "| critic (IQL) |",
        "| actors (every agent;",
    ):
        assert row in table
    assert json.loads((tmp_path / "omsd.json").read_text())["results_ms"]["sequential"]["actors"] > 0


def test_ovmse_bench_learner_adds_omsd_rows_on_one_thread_unless_told_not_to(tmp_path, monkeypatch):
    import importlib.util

    from deploy import bench

    spec = importlib.util.spec_from_file_location("bench_learner", bench.BENCH_DIR / "bench_learner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The QMIX rows are not under test here.
    monkeypatch.setattr(module, "matmul_gflops", lambda: 1.0)
    monkeypatch.setattr(module, "measure_cpu", lambda *args: [])
    small = ["--rounds=1", "--batch-sizes=2", "--kinds=td", "--shapes=uniform", "--precisions=fp32"]
    threads = torch.get_num_threads()
    try:
        module.main([*small, "--threads=2", "--omsd-batch=8", "--devices=cpu", "--out", str(tmp_path)])
        assert torch.get_num_threads() == 2  # the OMSD rows' one thread was handed back
        with_rows = (tmp_path / "learner.md").read_text()
        module.main([*small, "--omsd-batch=0", "--devices=cpu", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert "OMSD on the particle world (one thread; batch 8 transitions" in with_rows
    assert "| actors (every agent; one denoiser call each, one in all for joint) |" in with_rows
    assert "OMSD" not in (tmp_path / "learner.md").read_text()
