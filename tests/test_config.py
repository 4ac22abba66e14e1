"""The configuration: presets carry the paper's numbers, bad input is refused in one line naming the
key (and the file), and the layers override each other in the documented order."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import yaml

from common.config import (
    DATASET_KINDS,
    METHOD_NAMES,
    METHODS,
    PAPER_MAPS,
    Config,
    ConfigError,
    EnvConfig,
    LearnerConfig,
    ReplayConfig,
    apply_overrides,
    batch_split,
    config_from_dict,
    config_to_dict,
    derived_samples_per_insert,
    format_config,
    presets,
    rate_limit,
    resolve_config,
    validate_config,
    write_config,
)

TASKS = list(itertools.product(PAPER_MAPS, DATASET_KINDS))


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("map_name", "kind", "method"), list(itertools.product(PAPER_MAPS, DATASET_KINDS, METHOD_NAMES))
)
def test_every_paper_preset_resolves_and_validates(map_name, kind, method):
    cfg = resolve_config(map_name, kind, method)
    validate_config(cfg)
    assert (cfg.env.map_name, cfg.run.dataset_kind, cfg.learner.method) == (map_name, kind, method)


def test_the_final_evaluation_plays_the_papers_640_episodes_in_every_preset_and_the_demo():
    from deploy.studies.demo import demo_config

    presets = [(m, k, method) for m, k in TASKS for method in METHOD_NAMES]
    finals = {resolve_config(*preset).actor.final_test_episodes for preset in presets}
    assert finals == {640} and resolve_config().actor.final_test_episodes == 640
    assert demo_config()[0].actor.final_test_episodes == 640


def test_the_methods_table_lists_every_method():
    assert tuple(METHODS) == METHOD_NAMES


@pytest.mark.parametrize(
    ("map_name", "batch_size_run", "target_interval", "clip", "cql", "cql_weight", "steps"),
    [
        ("2s3z", 2, 50, 1.0, "cql", 0.05, 1_000_000),
        ("3s5z", 2, 50, 0.5, "cql", 0.25, 1_000_000),
        ("5m_vs_6m", 8, 200, 10.0, "cfcql", 50.0, 3_000_000),
        ("6h_vs_8z", 8, 200, 10.0, "cfcql", 20.0, 3_000_000),
    ],
)
def test_per_map_values_follow_table_3_and_appendix_a4(
    map_name, batch_size_run, target_interval, clip, cql, cql_weight, steps
):
    for kind in DATASET_KINDS:
        learner = resolve_config(map_name, kind, "ovmse").learner
        assert learner.batch_size_run == batch_size_run
        assert learner.target_update_interval == target_interval
        assert learner.grad_clip_online == clip
        assert learner.offline_cql == cql
        assert learner.offline_cql_weight == cql_weight
        assert resolve_config(map_name, kind, "ovmse").run.online_env_steps == steps


@pytest.mark.parametrize(
    ("map_name", "kind", "method", "ratio"),
    [
        ("3s5z", "medium", "ovmse", 0.1),
        ("2s3z", "medium", "ovmse", 0.0),
        ("5m_vs_6m", "medium", "ovmse", 0.1),
        ("5m_vs_6m", "medium_replay", "ovmse", 0.0),
        ("6h_vs_8z", "medium", "ovmse", 0.1),
        ("5m_vs_6m", "medium_replay", "switch_cql", 0.3),
        ("3s5z", "medium", "switch_cql", 0.5),
        ("6h_vs_8z", "medium_replay", "switch_cql", 0.1),
        ("2s3z", "medium_replay", "macal_ql", 0.3),
        ("3s5z", "medium_replay", "macal_ql", 0.3),
        ("2s3z", "medium", "macal_ql", 0.5),
        ("2s3z", "medium", "macql", 0.3),
        ("6h_vs_8z", "medium", "macql", 0.5),
        ("3s5z", "medium", "qmix", 0.0),
    ],
)
def test_mixing_ratio_follows_table_4(map_name, kind, method, ratio):
    assert resolve_config(map_name, kind, method).replay.mixing_ratio == ratio


@pytest.mark.parametrize(("map_name", "kind"), TASKS)
def test_ablations_use_ovmse_mixing_ratio(map_name, kind):
    ovmse = resolve_config(map_name, kind, "ovmse").replay.mixing_ratio
    assert resolve_config(map_name, kind, "ovm").replay.mixing_ratio == ovmse
    assert resolve_config(map_name, kind, "se").replay.mixing_ratio == ovmse


@pytest.mark.parametrize(("map_name", "kind"), TASKS)
def test_online_cql_weight_follows_table_5(map_name, kind):
    def online(method):
        return resolve_config(map_name, kind, method).learner

    for method in ("macql", "macal_ql"):  # the offline weight, online too
        assert online(method).online_cql_weight == online(method).offline_cql_weight > 0
    expected_ovmse = 0.05 if map_name == "2s3z" else 0.0
    assert online("ovmse").online_cql_weight == expected_ovmse
    assert online("ovm").online_cql_weight == expected_ovmse
    assert online("switch_cql").online_cql_weight == 0.0
    assert online("se").online_cql_weight == 0.0
    assert online("qmix").online_cql_weight == 0.0


@pytest.mark.parametrize(
    ("map_name", "kind", "end", "steps"),
    [
        ("2s3z", "medium", 1.0, 0),
        ("3s5z", "medium_replay", 1.0, 0),
        ("5m_vs_6m", "medium", 0.1, 200_000),
        ("5m_vs_6m", "medium_replay", 0.05, 200_000),
        ("6h_vs_8z", "medium", 0.05, 100_000),
        ("6h_vs_8z", "medium_replay", 0.05, 100_000),
    ],
)
def test_memory_coefficient_follows_table_6(map_name, kind, end, steps):
    for method in ("ovmse", "ovm"):
        learner = resolve_config(map_name, kind, method).learner
        assert learner.use_offline_value_memory
        assert (learner.memory_coef_start, learner.memory_coef_end, learner.memory_anneal_steps) == (
            1.0,
            end,
            steps,
        )


def test_only_the_ovm_methods_use_the_offline_value_memory():
    for method in METHOD_NAMES:
        uses = resolve_config("3s5z", "medium", method).learner.use_offline_value_memory
        assert uses == (method in ("ovmse", "ovm", "inspo_ovm")), method


OFFLINE_BASELINE_LOSS = {
    "inspo": "none", "bc": "none", "qmix_cql": "cql", "cfcql": "cfcql", "inspo_ovm": "none",
}  # fmt: skip


def test_every_method_uses_the_maps_cql_loss_and_macal_ql_adds_the_floor():
    assert resolve_config("2s3z", "medium", "switch_cql").learner.offline_cql == "cql"
    assert resolve_config("6h_vs_8z", "medium", "macql").learner.offline_cql == "cfcql"
    for map_name, kind, method in itertools.product(PAPER_MAPS, DATASET_KINDS, METHOD_NAMES):
        learner = resolve_config(map_name, kind, method).learner
        if method in OFFLINE_BASELINE_LOSS:  # InSPO and its baselines: each its own loss on every map
            assert learner.offline_cql == OFFLINE_BASELINE_LOSS[method], (map_name, method)
        elif method != "qmix":  # appendix A.4: one CQL loss per map, MACal-QL's included
            assert learner.offline_cql == ("cfcql" if map_name in ("5m_vs_6m", "6h_vs_8z") else "cql")
        assert learner.calql_floor == (method == "macal_ql"), (map_name, kind, method)


@pytest.mark.parametrize(
    ("map_name", "kind", "tau"),
    [
        ("5m_vs_6m", "medium", 0.5),
        ("5m_vs_6m", "medium_replay", 0.5),
        ("6h_vs_8z", "medium", 1.0),
        ("6h_vs_8z", "medium_replay", 0.5),
    ],
)
def test_cfcql_temperature_follows_cfcqls_readme_per_map_and_dataset(map_name, kind, tau):
    for method in ("ovmse", "switch_cql", "macql", "macal_ql"):
        assert resolve_config(map_name, kind, method).learner.cfcql_softmax_temperature == tau


@pytest.mark.parametrize(("kind", "tau", "weight"), [("medium", 0.5, 0.1), ("medium_replay", 0.1, 5.0)])
def test_cfcql_on_2s3z_takes_cfcqls_own_temperature_and_weight(kind, tau, weight):
    learner = resolve_config("2s3z", kind, "cfcql").learner
    assert (learner.offline_cql, learner.cfcql_softmax_temperature, learner.offline_cql_weight) == (
        "cfcql",
        tau,
        weight,
    )
    assert resolve_config("2s3z", kind, "macql").learner.offline_cql_weight == 0.05  # raw CQL: Table 3


def test_the_baselines_defaults_follow_their_references():
    learner = resolve_config("3s5z", "medium", "ovmse").learner
    assert learner.cql_sampler == "available_only"  # not CFCQL's draws: measured, docs/learner.md
    assert learner.ovm_target == "td_lambda"  # PyMARL2's target, as every other loss here
    assert learner.behaviour_pretrain_updates > 0  # CFCQL's behaviour policy is cloned first
    assert not learner.calql_floor


def test_td_lambda_is_0_3_on_6h_vs_8z_only():
    for map_name, method in itertools.product(PAPER_MAPS, METHOD_NAMES):
        expected = 0.3 if map_name == "6h_vs_8z" else 0.6
        assert resolve_config(map_name, "medium", method).learner.td_lambda == expected


def test_exploration_per_method():
    for method in METHOD_NAMES:
        actor = resolve_config("5m_vs_6m", "medium", method).actor
        expected = "decentralized_se" if method in ("ovmse", "se", "inspo_ovm") else "epsilon_greedy"
        assert actor.exploration == expected
        if method != "qmix":  # Table 7 and A.2: 1.0 -> 0.05 over 100k in every O2O task
            assert (actor.epsilon_start, actor.epsilon_end, actor.epsilon_anneal_steps) == (
                1.0,
                0.05,
                100_000,
            )


def test_qmix_trains_from_scratch_with_pymarl2_settings():
    for map_name in PAPER_MAPS:
        cfg = resolve_config(map_name, None, "qmix")
        assert cfg.learner.offline_cql == "none"
        assert cfg.learner.offline_updates == 0
        assert cfg.learner.use_offline_value_memory is False
        assert cfg.replay.mixing_ratio == 0.0
        assert cfg.run.dataset is None and cfg.run.dataset_kind is None
        assert cfg.learner.grad_clip_online == 10.0
        assert cfg.actor.epsilon_anneal_steps == (500_000 if map_name == "6h_vs_8z" else 100_000)
    # Appendix A.1: QMIX takes the O2O methods' batch_size_run and target interval.
    assert resolve_config("5m_vs_6m", None, "qmix").learner.batch_size_run == 8
    assert resolve_config("2s3z", None, "qmix").learner.target_update_interval == 50


def test_o2o_presets_point_at_the_dataset_file():
    cfg = resolve_config("5m_vs_6m", "medium_replay", "ovmse")
    assert cfg.run.dataset == "data/5m_vs_6m_medium_replay.h5"
    assert cfg.learner.offline_updates > 0


def test_other_maps_get_generic_values():
    cfg = resolve_config("8m", "medium", "ovmse")
    hp = presets.OTHER_MAPS
    assert cfg.env.map_name == "8m"
    assert cfg.learner.batch_size_run == hp.batch_size_run
    assert cfg.learner.target_update_interval == hp.target_update_interval
    assert cfg.replay.mixing_ratio == presets.MIXING_RATIO[("3s5z", "medium")]["ovmse"]
    for method in METHOD_NAMES:
        resolve_config("MMM2", "medium_replay", method)


def test_unknown_method_or_dataset_kind_has_no_preset():
    with pytest.raises(ConfigError, match=r"learner\.method: no preset for method 'dqn'"):
        resolve_config("3s5z", "medium", "dqn")
    with pytest.raises(ConfigError, match=r"run\.dataset_kind: no preset for dataset kind 'expert'"):
        resolve_config("3s5z", "expert", "ovmse")


def test_defaults_without_arguments_are_3s5z_medium_ovmse():
    cfg = resolve_config()
    assert (cfg.env.map_name, cfg.run.dataset_kind, cfg.learner.method) == ("3s5z", "medium", "ovmse")


# --- sections and derived values ---------------------------------------------------------------


def test_smac_kwargs_are_exactly_smacs_flags_with_smacs_defaults():
    kwargs = EnvConfig().smac_kwargs()
    assert kwargs == {
        "map_name": "3s5z",
        "seed": 0,
        "step_mul": 8,
        "move_amount": 2,
        "difficulty": "7",
        "continuing_episode": False,
        "obs_all_health": True,
        "obs_own_health": True,
        "obs_last_action": False,
        "obs_pathing_grid": False,
        "obs_terrain_height": False,
        "obs_instead_of_state": False,
        "obs_timestep_number": False,
        "state_last_action": True,
        "state_timestep_number": False,
        "reward_sparse": False,
        "reward_only_positive": True,
        "reward_death_value": 10,
        "reward_win": 200,
        "reward_defeat": 0,
        "reward_negative_scale": 0.5,
        "reward_scale": True,
        "reward_scale_rate": 20,
    }


def test_the_defaults_are_the_3s5z_medium_ovmse_preset_and_sections_are_frozen():
    cfg = Config()
    validate_config(cfg)
    assert cfg == resolve_config("3s5z", "medium", "ovmse")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learner.lr = 0.1  # type: ignore[misc]


def test_batch_split_rounds_the_offline_share():
    assert batch_split(128, 0.1) == (13, 115)
    assert batch_split(128, 0.5) == (64, 64)
    assert batch_split(128, 0.0) == (0, 128)
    assert batch_split(128, 1.0) == (128, 0)


def test_samples_per_insert_matches_the_synchronous_algorithm():
    # One gradient step of 128 episodes per batch_size_run new episodes; the online share of it
    # comes from the online table.
    learner = LearnerConfig(batch_size=128, batch_size_run=2)
    assert derived_samples_per_insert(learner, ReplayConfig(mixing_ratio=0.1)) == 115 / 2
    learner = LearnerConfig(batch_size=128, batch_size_run=8)
    assert derived_samples_per_insert(learner, ReplayConfig(mixing_ratio=0.0)) == 16.0


def test_rate_limit_derives_unset_fields_and_keeps_set_ones():
    cfg = resolve_config("3s5z", "medium", "ovmse")
    limit = rate_limit(cfg)
    assert limit.samples_per_insert == 57.5
    assert limit.min_size_to_sample == cfg.learner.batch_size
    assert limit.error_buffer >= max(1.0, limit.samples_per_insert)  # Reverb's minimum
    # Two gradient steps' worth of online samples: 2 x 57.5 samples per insert x 2 episodes a step.
    assert limit.error_buffer == 2 * 57.5 * cfg.learner.batch_size_run == 230.0
    cfg = apply_overrides(
        cfg,
        [
            "replay.samples_per_insert=4",
            "replay.min_size_to_sample=10",
            "replay.rate_limiter_error_buffer=40",
        ],
    )
    assert tuple(rate_limit(cfg)) == (4.0, 10, 40.0)


# --- bad input ---------------------------------------------------------------------------------

BAD_OVERRIDES = [
    (["learner.lrr=0.1"], "unknown key 'learner.lrr' (did you mean 'learner.lr'?)"),
    (["replay.batch_size=3"], "unknown key 'replay.batch_size' (did you mean 'learner.batch_size'?)"),
    (["lerner.lr=0.1"], "unknown section 'lerner' (did you mean 'learner'?)"),
    (["learner.lr=abc"], "learner.lr: expected a float, got 'abc'"),
    (["learner.batch_size=2.5"], "learner.batch_size: expected an integer, got '2.5'"),
    (["env.reward_sparse=yes"], "env.reward_sparse: expected true or false"),
    (["replay.mixing_ratio=1.5"], "replay.mixing_ratio: must be in [0, 1], got 1.5"),
    (["replay.mixing_ratio=-0.1"], "replay.mixing_ratio: must be in [0, 1], got -0.1"),
    (["learner.lr=-0.001"], "learner.lr: must be > 0, got -0.001"),
    (["learner.lr=nan"], "learner.lr: expected a float, got 'nan'"),
    (["run.online_env_steps=-1"], "run.online_env_steps: must be >= 0, got -1"),
    (["learner.target_update_interval=0"], "learner.target_update_interval: must be >= 1, got 0"),
    (["run.log_interval_s=0"], "run.log_interval_s: must be > 0, got 0.0"),
    (["learner.batch_size=0"], "learner.batch_size: must be >= 1, got 0"),
    (["learner.batch_size_run=0"], "learner.batch_size_run: must be >= 1, got 0"),
    (["learner.gamma=1.2"], "learner.gamma: must be in [0, 1], got 1.2"),
    (["learner.td_lambda=-0.1"], "learner.td_lambda: must be in [0, 1], got -0.1"),
    (["actor.epsilon_start=2"], "actor.epsilon_start: must be in [0, 1], got 2.0"),
    (
        ["actor.epsilon_end=0.5", "actor.epsilon_start=0.1"],
        "actor.epsilon_end: must be <= actor.epsilon_start",
    ),
    (["learner.memory_coef_start=1.5"], "learner.memory_coef_start: must be in [0, 1], got 1.5"),
    (["learner.memory_coef_start=0.1", "learner.memory_coef_end=0.5"], "learner.memory_coef_end: must be <="),
    (["env.backend=sc3"], "env.backend: must be one of lite, sc2, matrix, got 'sc3'"),
    (["learner.method=dqn"], "learner.method: no preset for method 'dqn'"),
    (["actor.exploration=boltzmann"], "actor.exploration: must be one of decentralized_se"),
    (["actor.exploration=policy_sample"], "actor.exploration: policy_sample samples from a policy's logits"),
    (["learner.offline_cql=bcq"], "learner.offline_cql: must be one of cql, cfcql, none, got 'bcq'"),
    (
        ["learner.offline_cql=calql"],
        "learner.offline_cql: 'calql' is no longer a CQL variant: use learner.calql_floor=true",
    ),
    (
        ["learner.offline_cql=none", "learner.online_cql_weight=0", "learner.calql_floor=true"],
        "learner.calql_floor: must be false when learner.offline_cql is 'none'",
    ),
    (["learner.calql_floor=maybe"], "learner.calql_floor: expected true or false, got 'maybe'"),
    (["learner.cql_sampler=some"], "learner.cql_sampler: must be one of all_actions, available_only"),
    (["learner.behaviour_pretrain_updates=-1"], "learner.behaviour_pretrain_updates: must be >= 0, got -1"),
    (["learner.behaviour_pretrain_updates=1.5"], "learner.behaviour_pretrain_updates: expected an integer"),
    (["learner.ovm_target=n_step"], "learner.ovm_target: must be one of td_lambda, one_step, got 'n_step'"),
    (["replay.port=70000"], "replay.port: must be a port number in [0, 65535], got 70000"),
    (["actor.weight_server=localhost"], "actor.weight_server: must be HOST:PORT"),
    (["learner.device=tpu"], "learner.device: must be auto, cpu, mps, cuda or cuda:N"),
    (["learner.precision=fp16"], "learner.precision: must be one of auto, fp32, bf16, got 'fp16'"),
    (["run.dataset=none"], "run.dataset: is required when replay.mixing_ratio > 0"),
    (["learner.offline_cql=none"], "learner.online_cql_weight: must be 0 when learner.offline_cql is 'none'"),
    (["learner.lr"], "--set 'learner.lr': expected SECTION.KEY=VALUE"),
    (["lr=0.1"], "--set 'lr=0.1': the key needs its section, e.g. 'learner.lr'"),
    (["replay.online_capacity=10"], "learner.batch_size: the online table must reach 128 episodes"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_OVERRIDES)
def test_bad_overrides_are_one_line_errors_naming_the_key(overrides, message):
    # 2s3z: the online CQL weight is non-zero there, which the offline_cql=none case needs.
    with pytest.raises(ConfigError) as caught:
        resolve_config("2s3z", "medium", "ovmse", overrides=overrides)
    text = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in text
    assert text.startswith("config error: ")
    assert message in text


def test_config_error_survives_crossing_a_process_boundary():
    # Ray and multiprocessing rebuild exceptions through __reduce__; deepcopy takes the same path.
    error = ConfigError("must be in [0, 1], got 1.5", key="replay.mixing_ratio", source="my.yaml")
    again = copy.deepcopy(error)
    assert (
        str(again) == str(error) == "config error in my.yaml: replay.mixing_ratio: must be in [0, 1], got 1.5"
    )
    assert again.key == "replay.mixing_ratio"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "learner:\n  lrr: 0.1\n", "unknown key 'learner.lrr' (did you mean 'learner.lr'?)"),
        ("bad.yaml", "lerner:\n  lr: 0.1\n", "unknown section 'lerner'"),
        ("bad.yaml", "env:\n  reward_sparse: 1\n", "env.reward_sparse: expected true or false, got 1"),
        ("bad.yaml", "learner:\n  lr: '0.1'\n", "learner.lr: expected a float, got '0.1'"),
        ("bad.yaml", "replay:\n  mixing_ratio: 1.5\n", "replay.mixing_ratio: must be in [0, 1], got 1.5"),
        ("bad.yaml", "learner: [1, 2]\n", "learner: expected a mapping of keys"),
        ("bad.yaml", "learner:\n  lr: [0.1\n", "invalid YAML at line"),
        ("bad.yaml", "preset:\n  mapp: 3m\n", "unknown key 'preset.mapp' (did you mean 'preset.map'?)"),
        ("bad.yaml", "learner:\n  method: dqn\n", "learner.method: no preset for method 'dqn'"),
        ("bad.toml", "[learner]\nlrr = 0.1\n", "unknown key 'learner.lrr'"),
        ("bad.toml", "[replay]\nmixing_ratio = 1.5\n", "replay.mixing_ratio: must be in [0, 1], got 1.5"),
        ("bad.toml", "[actor]\nepsilon_start = true\n", "actor.epsilon_start: expected a float, got True"),
        ("bad.toml", "[actor\n", "invalid TOML"),
        ("bad.json", "{}", "unsupported config file type '.json'"),
    ],
)
def test_file_errors_name_the_file(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        resolve_config(file=path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"config error in {path}: ")
    assert message in text


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        resolve_config(file=tmp_path / "absent.yaml")


def test_an_override_error_does_not_blame_the_file(tmp_path):
    path = _write(tmp_path, "ok.yaml", "learner:\n  lr: 0.01\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config(file=path, overrides=["replay.mixing_ratio=2"])
    assert str(caught.value).startswith("config error: replay.mixing_ratio")


def test_file_types_ints_for_floats_and_integral_floats_for_ints(tmp_path):
    path = _write(tmp_path, "ok.toml", "[learner]\nlr = 1\n[run]\nonline_env_steps = 2e6\n")
    cfg = resolve_config(file=path)
    assert cfg.learner.lr == 1.0 and isinstance(cfg.learner.lr, float)
    assert cfg.run.online_env_steps == 2_000_000 and isinstance(cfg.run.online_env_steps, int)


# --- layering ----------------------------------------------------------------------------------


def test_set_wins_over_the_file_which_wins_over_the_preset(tmp_path):
    path = _write(
        tmp_path, "mine.yaml", "learner:\n  lr: 0.01\n  gamma: 0.95\nreplay:\n  mixing_ratio: 0.3\n"
    )
    cfg = resolve_config("3s5z", "medium", "ovmse", file=path, overrides=["learner.lr=0.02"])
    assert cfg.learner.lr == 0.02  # --set over the file
    assert cfg.learner.gamma == 0.95  # the file over the default
    assert cfg.replay.mixing_ratio == 0.3  # the file over the preset (0.1)
    assert cfg.learner.grad_clip_online == 0.5  # the preset where nothing else says
    assert (
        cfg.learner.lr == resolve_config("3s5z", "medium", "ovmse", overrides=["learner.lr=0.02"]).learner.lr
    )


def test_a_toml_file_layers_the_same_way(tmp_path):
    path = _write(tmp_path, "mine.toml", '[replay]\nmixing_ratio = 0.3\n[run]\nname = "mine"\n')
    cfg = resolve_config("5m_vs_6m", "medium", "ovmse", file=path, overrides=["run.name=theirs"])
    assert cfg.replay.mixing_ratio == 0.3
    assert cfg.run.name == "theirs"
    assert cfg.learner.batch_size_run == 8


def test_the_file_can_choose_the_preset(tmp_path):
    path = _write(
        tmp_path, "p.yaml", "preset:\n  map: 5m_vs_6m\n  dataset: medium_replay\n  method: switch_cql\n"
    )
    cfg = resolve_config(file=path)
    assert (cfg.env.map_name, cfg.run.dataset_kind, cfg.learner.method) == (
        "5m_vs_6m",
        "medium_replay",
        "switch_cql",
    )
    assert cfg.replay.mixing_ratio == 0.3
    # the command line's choice wins over the file's
    assert resolve_config(method="ovmse", file=path).replay.mixing_ratio == 0.0


def test_setting_the_map_or_method_chooses_its_preset():
    cfg = resolve_config(
        "3s5z", "medium", "ovmse", overrides=["env.map_name=6h_vs_8z", "learner.method=qmix"]
    )
    assert cfg.env.map_name == "6h_vs_8z"
    assert cfg.learner.td_lambda == 0.3
    assert cfg.learner.offline_cql == "none"


def test_a_file_that_names_another_preset_refuses_a_different_choice(tmp_path):
    # A run's resolved config.yaml holds every value of its preset; reusing it with another method
    # would give a run labelled switch_cql that trains like ovmse.
    path = write_config(resolve_config("2s3z", "medium", "ovmse"), tmp_path / "config.yaml")
    with pytest.raises(
        ConfigError,
        match=r"in .*config.yaml: learner\.method: the file says 'ovmse' but "
        r"'switch_cql' was asked for",
    ):
        resolve_config(method="switch_cql", file=path)
    with pytest.raises(ConfigError, match=r"env\.map_name: the file says '2s3z' but '3m'"):
        resolve_config(file=path, overrides=["env.map_name=3m"])
    assert resolve_config("2s3z", "medium", "ovmse", file=path).learner.method == "ovmse"


def test_apply_overrides_changes_a_resolved_config():
    cfg = resolve_config("2s3z", "medium", "ovmse")
    new = apply_overrides(
        cfg, ["learner.lr=5e-4", "run.dataset=null", "replay.mixing_ratio=0", "learner.offline_updates=0"]
    )
    assert new.learner.lr == 5e-4 and new.run.dataset is None
    assert new.learner.grad_clip_online == cfg.learner.grad_clip_online


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("map_name", "kind", "method"),
    [
        ("3s5z", "medium", "ovmse"),
        ("6h_vs_8z", "medium_replay", "macal_ql"),
        ("5m_vs_6m", None, "qmix"),
        ("3m", "medium", "se"),
    ],
)
def test_format_config_round_trips_through_the_loader(tmp_path, map_name, kind, method):
    cfg = resolve_config(map_name, kind, method, overrides=["env.difficulty=A", "replay.checkpoint_dir=ckpt"])
    text = format_config(cfg)
    assert yaml.safe_load(text) == config_to_dict(cfg)
    path = write_config(cfg, tmp_path / "run" / "config.yaml")
    assert resolve_config(file=path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_config_from_dict_refuses_what_the_loader_refuses():
    with pytest.raises(ConfigError, match=r"config error in saved: unknown key 'learner\.lrr'"):
        config_from_dict({"learner": {"lrr": 1}}, source="saved")
    with pytest.raises(ConfigError, match=r"replay\.mixing_ratio: must be in \[0, 1\]"):
        config_from_dict({"replay": {"mixing_ratio": 3}, "run": {"dataset": "d.h5"}})


def test_ovmse_config_shows_the_baselines_keys():
    text = format_config(resolve_config("6h_vs_8z", "medium", "macal_ql"))
    learner = yaml.safe_load(text)["learner"]
    assert learner["offline_cql"] == "cfcql" and learner["calql_floor"] is True
    assert learner["cfcql_softmax_temperature"] == 1.0
    assert learner["cql_sampler"] == "available_only"
    assert learner["ovm_target"] == "td_lambda"
    assert learner["behaviour_pretrain_updates"] == LearnerConfig().behaviour_pretrain_updates
