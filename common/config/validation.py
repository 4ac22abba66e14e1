"""Validation of a resolved configuration: one function per section, then the rules across
sections. Each returns nothing and adds (dotted key, detail) pairs to a `Problems`; `problems(cfg)`
lists them all in section order and `validate_config` raises the first as a `ConfigError`.

A learner family's own rules live with its spec (`algorithms.py`): the checks here ask the spec,
never compare algorithm names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.config.algorithms import ALGORITHMS, AlgorithmSpec, algorithm_spec, inspo_field_ranges
from common.config.presets import METHOD_NAMES
from common.config.problems import Problems, show, suggest
from common.config.sections import (
    ACTING_BACK_ENDS,
    CQL_SAMPLERS,
    CQL_VARIANTS,
    DATASET_KINDS,
    EXPLORATIONS,
    OVM_TARGETS,
    PRECISIONS,
    SMAC_DIFFICULTIES,
    ActorConfig,
    Config,
    ConfigError,
    EnvConfig,
    LearnerConfig,
    ReplayConfig,
    RunConfig,
    derived_samples_per_insert,
    rate_limit,
)
from common.envs.factory import BACKENDS

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# gRPC sizes messages with a signed 32-bit int: 2047 MiB is the largest whole number of MiB below it.
GRPC_MAX_MESSAGE_MB = ((1 << 31) - 1) >> 20


def env_problems(p: Problems, env: EnvConfig) -> None:
    p.one_of("env.backend", env.backend, BACKENDS)
    p.not_empty("env.map_name", env.map_name)
    if env.backend == "lite" and env.map_name.strip():
        # StarCraft II reads its own map registry (SMAC's, or a custom map), checked when it starts.
        from common.envs.maps import lite_map_names

        maps = lite_map_names()
        p.require(
            env.map_name in maps,
            "env.map_name",
            f"unknown map {env.map_name!r}{suggest(env.map_name, maps)}; the lite world has "
            f"{', '.join(sorted(maps))}",
        )
    smacv2_problems(p, env)
    p.at_least("env.seed", env.seed, 0)
    p.at_least("env.step_mul", env.step_mul, 1)
    p.at_least("env.move_amount", env.move_amount, 1)
    p.one_of("env.difficulty", env.difficulty, SMAC_DIFFICULTIES)
    p.at_least("env.reward_death_value", env.reward_death_value, 0)
    p.at_least("env.reward_win", env.reward_win, 0)
    p.at_least("env.reward_negative_scale", env.reward_negative_scale, 0)
    p.positive("env.reward_scale_rate", env.reward_scale_rate)


def smacv2_problems(p: Problems, env: EnvConfig) -> None:
    """SMACv2's flags and capability fields: in range, and left at their defaults on a SMAC map."""
    from common.config.sections import CAPABILITY_FIELDS, SMACV2_FLAGS
    from common.envs.maps import smacv2_scenario
    from common.envs.smacv2 import POSITION_DISTRIBUTIONS, TEAM_DISTRIBUTIONS

    if smacv2_scenario(env.map_name) is None:
        default = EnvConfig()
        for name in (*SMACV2_FLAGS, *CAPABILITY_FIELDS):
            p.require(
                getattr(env, name) == getattr(default, name),
                f"env.{name}",
                f"a SMACv2 setting, and {env.map_name!r} is not a SMACv2 scenario (leave it at "
                f"{show(getattr(default, name))})",
            )
        return
    # The StarCraft II adapter wraps SMAC's StarCraft2Env; SMACv2's capability wrapper is not built.
    p.require(
        env.backend != "sc2",
        "env.backend",
        f"{env.map_name!r} is a SMACv2 scenario, which runs on the lite world only (backend 'lite'); "
        "the 'sc2' backend plays SMAC's maps",
    )
    p.at_least("env.num_fov_actions", env.num_fov_actions, 1)
    p.at_least("env.min_attack_range", env.min_attack_range, 0)
    p.at_least("env.kill_unit_step_mul", env.kill_unit_step_mul, 0)
    p.unit("env.prob_obs_enemy", env.prob_obs_enemy)
    p.one_of("env.team_gen", env.team_gen, TEAM_DISTRIBUTIONS)
    p.one_of("env.start_positions", env.start_positions, POSITION_DISTRIBUTIONS)
    p.unit("env.start_positions_p", env.start_positions_p)


def replay_problems(p: Problems, replay: ReplayConfig) -> None:
    p.not_empty("replay.address", replay.address)
    p.port("replay.port", replay.port)
    p.at_least("replay.online_capacity", replay.online_capacity, 1)
    if replay.min_size_to_sample is not None:
        p.at_least("replay.min_size_to_sample", replay.min_size_to_sample, 1)
    p.unit("replay.mixing_ratio", replay.mixing_ratio)
    if replay.samples_per_insert is not None:
        p.positive("replay.samples_per_insert", replay.samples_per_insert)
    if replay.rate_limiter_error_buffer is not None:
        p.positive("replay.rate_limiter_error_buffer", replay.rate_limiter_error_buffer)
    if replay.checkpoint_dir is not None:
        p.not_empty("replay.checkpoint_dir", replay.checkpoint_dir)
    p.positive("replay.checkpoint_interval_s", replay.checkpoint_interval_s)
    p.at_least("replay.prefetch_batches", replay.prefetch_batches, 0)


def learner_problems(p: Problems, learner: LearnerConfig) -> None:
    p.one_of("learner.method", learner.method, METHOD_NAMES)
    p.positive("learner.lr", learner.lr)
    p.unit("learner.gamma", learner.gamma)
    p.unit("learner.td_lambda", learner.td_lambda)
    p.at_least("learner.batch_size", learner.batch_size, 1)
    p.at_least("learner.batch_size_run", learner.batch_size_run, 1)
    p.at_least("learner.target_update_interval", learner.target_update_interval, 1)
    p.positive("learner.grad_clip_offline", learner.grad_clip_offline)
    p.positive("learner.grad_clip_online", learner.grad_clip_online)
    if learner.offline_cql == "calql":  # a variant of older versions, now the floor on either variant
        p.require(
            False,
            "learner.offline_cql",
            "'calql' is no longer a CQL variant: use learner.calql_floor=true with the map's variant "
            "(cql or cfcql)",
        )
    else:
        p.one_of("learner.offline_cql", learner.offline_cql, CQL_VARIANTS)
    p.at_least("learner.offline_cql_weight", learner.offline_cql_weight, 0)
    p.at_least("learner.online_cql_weight", learner.online_cql_weight, 0)
    p.at_least("learner.cfcql_softmax_temperature", learner.cfcql_softmax_temperature, 0)
    p.at_least("learner.cql_sampled_actions", learner.cql_sampled_actions, 1)
    p.one_of("learner.cql_sampler", learner.cql_sampler, CQL_SAMPLERS)
    p.at_least("learner.behaviour_pretrain_updates", learner.behaviour_pretrain_updates, 0)
    p.one_of("learner.ovm_target", learner.ovm_target, OVM_TARGETS)
    p.unit("learner.memory_coef_start", learner.memory_coef_start)
    p.unit("learner.memory_coef_end", learner.memory_coef_end)
    p.not_above(
        "learner.memory_coef_end",
        learner.memory_coef_end,
        "learner.memory_coef_start",
        learner.memory_coef_start,
    )
    p.at_least("learner.memory_anneal_steps", learner.memory_anneal_steps, 0)
    p.at_least("learner.offline_updates", learner.offline_updates, 0)
    p.at_least("learner.rnn_hidden_dim", learner.rnn_hidden_dim, 1)
    p.at_least("learner.mixing_embed_dim", learner.mixing_embed_dim, 1)
    p.at_least("learner.hypernet_embed_dim", learner.hypernet_embed_dim, 1)
    p.require(
        DEVICE.fullmatch(learner.device) is not None,
        "learner.device",
        f"must be auto, cpu, mps, cuda or cuda:N, got {show(learner.device)}",
    )
    p.one_of("learner.precision", learner.precision, PRECISIONS)
    p.at_least("learner.weight_publish_interval", learner.weight_publish_interval, 1)
    p.at_least("learner.checkpoint_interval", learner.checkpoint_interval, 0)
    p.at_least("learner.checkpoint_interval_s", learner.checkpoint_interval_s, 0)
    p.require(
        learner.online_cql_weight == 0 or learner.offline_cql != "none",
        "learner.online_cql_weight",
        f"must be 0 when learner.offline_cql is 'none' (no CQL variant to apply), "
        f"got {learner.online_cql_weight}",
    )
    p.require(
        not learner.calql_floor or learner.offline_cql != "none",
        "learner.calql_floor",
        "must be false when learner.offline_cql is 'none' (the floor applies to a CQL variant)",
    )
    inspo_field_ranges(p, learner)
    p.one_of("learner.algorithm", learner.algorithm, ALGORITHMS)
    if learner.algorithm in ALGORITHMS:
        algorithm_spec(learner.algorithm).check_fields(p, learner)


def algorithm_problems(p: Problems, spec: AlgorithmSpec, actor: ActorConfig, run: RunConfig) -> None:
    """What the chosen learner family asks of the other sections."""
    p.require(
        not spec.fine_tunes_only
        or run.online_env_steps == 0
        or run.dataset is not None
        or run.init_checkpoint is not None,
        "run.online_env_steps",
        f"is {run.online_env_steps}, but {spec.display_name} fine-tunes a pre-trained policy: give "
        "run.dataset (pre-training first) or run.init_checkpoint",
    )
    p.require(
        actor.inference in spec.acting_back_ends or actor.inference not in ACTING_BACK_ENDS,
        "actor.inference",
        f"must be torch with learner.algorithm {spec.name}, or auto (its per-agent networks act "
        "through torch)",
    )
    p.require(
        actor.exploration in spec.explorations or actor.exploration not in EXPLORATIONS,
        "actor.exploration",
        f"{actor.exploration} samples from a policy's logits: it needs a learner.algorithm whose "
        f"network outputs logits (got {spec.name!r}, whose network outputs Q-values)",
    )


def actor_problems(p: Problems, actor: ActorConfig) -> None:
    p.at_least("actor.num_actors", actor.num_actors, 1)
    p.at_least("actor.envs_per_actor", actor.envs_per_actor, 1)
    p.one_of("actor.exploration", actor.exploration, EXPLORATIONS)
    p.one_of("actor.inference", actor.inference, ACTING_BACK_ENDS)
    p.unit("actor.epsilon_start", actor.epsilon_start)
    p.unit("actor.epsilon_end", actor.epsilon_end)
    p.not_above("actor.epsilon_end", actor.epsilon_end, "actor.epsilon_start", actor.epsilon_start)
    p.at_least("actor.epsilon_anneal_steps", actor.epsilon_anneal_steps, 0)
    host, _, port = actor.weight_server.rpartition(":")
    p.require(
        bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
        "actor.weight_server",
        f"must be HOST:PORT, got {show(actor.weight_server)}",
    )
    p.at_least("actor.test_episodes", actor.test_episodes, 1)
    p.at_least("actor.final_test_episodes", actor.final_test_episodes, 0)


def run_problems(p: Problems, run: RunConfig) -> None:
    p.not_empty("run.name", run.name)
    p.require(
        not re.search(r"[/\\]", run.name) and run.name not in (".", ".."),
        "run.name",
        f"must be a plain name (no path separators), got {show(run.name)}",
    )
    p.not_empty("run.run_dir", run.run_dir)
    p.at_least("run.seed", run.seed, 0)
    if run.dataset is not None:
        p.not_empty("run.dataset", run.dataset)
    p.one_of("run.dataset_kind", run.dataset_kind, (*DATASET_KINDS, None))
    p.at_least("run.online_env_steps", run.online_env_steps, 0)
    p.at_least("run.eval_interval_steps", run.eval_interval_steps, 1)
    p.at_least("run.offline_eval_interval", run.offline_eval_interval, 0)
    p.at_least("run.offline_diagnostic_episodes", run.offline_diagnostic_episodes, 0)
    p.at_least("run.trainer_checkpoint_interval_s", run.trainer_checkpoint_interval_s, 0)
    p.positive("run.log_interval_s", run.log_interval_s)
    p.port("run.metrics_port", run.metrics_port)
    p.not_empty("run.bind_address", run.bind_address)
    p.require(
        1 <= run.grpc_max_message_mb <= GRPC_MAX_MESSAGE_MB,
        "run.grpc_max_message_mb",
        f"must be in [1, {GRPC_MAX_MESSAGE_MB}] (gRPC's messages are at most 2 GiB - 1 byte), "
        f"got {show(run.grpc_max_message_mb)}",
    )
    if run.init_checkpoint is not None:
        p.not_empty("run.init_checkpoint", run.init_checkpoint)
    if run.auth_token_file is not None:
        p.not_empty("run.auth_token_file", run.auth_token_file)


def cross_section_problems(p: Problems, cfg: Config) -> None:
    """Rules across sections, asked once the fields themselves are sound."""
    replay, learner, run = cfg.replay, cfg.learner, cfg.run
    p.require(
        run.dataset is not None or (replay.mixing_ratio == 0 and learner.offline_updates == 0),
        "run.dataset",
        "is required when replay.mixing_ratio > 0 or learner.offline_updates > 0 "
        "(name the offline data file, or set both to 0)",
    )
    limit = rate_limit(cfg)
    min_key = "replay.min_size_to_sample" if replay.min_size_to_sample is not None else "learner.batch_size"
    p.require(
        limit.min_size_to_sample <= replay.online_capacity,
        min_key,
        f"the online table must reach {limit.min_size_to_sample} episodes before sampling, more than "
        f"replay.online_capacity ({replay.online_capacity})",
    )
    if replay.rate_limiter_error_buffer is not None:
        floor = max(1.0, limit.samples_per_insert)
        p.require(
            limit.error_buffer >= floor,
            "replay.rate_limiter_error_buffer",
            f"must be >= max(1, samples per insert) = {floor:g} (Reverb's minimum), "
            f"got {limit.error_buffer:g}",
        )
    if replay.samples_per_insert is None and replay.mixing_ratio < 1:
        p.require(
            derived_samples_per_insert(learner, replay) > 0,
            "replay.mixing_ratio",
            f"leaves no online episode in a batch of {learner.batch_size}; use 1.0 for offline-only batches",
        )


def problems(cfg: Config) -> list[tuple[str, str]]:
    """Every problem with `cfg`, as (dotted key, detail), in section order."""
    p = Problems()
    env_problems(p, cfg.env)
    replay_problems(p, cfg.replay)
    learner_problems(p, cfg.learner)
    if cfg.learner.algorithm in ALGORITHMS:
        algorithm_problems(p, algorithm_spec(cfg.learner.algorithm), cfg.actor, cfg.run)
    actor_problems(p, cfg.actor)
    run_problems(p, cfg.run)
    if not p.found:
        cross_section_problems(p, cfg)
    return p.found


def validate_config(cfg: Config, sources: Mapping[str, str | None] | None = None) -> None:
    """Raise ConfigError for the first problem; `sources` maps dotted keys to the file their value
    came from, so the message can name it."""
    found = problems(cfg)
    if found:
        key, detail = found[0]
        raise ConfigError(detail, key=key, source=(sources or {}).get(key))
