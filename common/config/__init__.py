"""Typed configuration: dataclass sections, the paper's presets, files, `--set` overrides, validation.

    from common.config import resolve_config
    cfg = resolve_config("5m_vs_6m", "medium_replay", "ovmse", overrides=["learner.lr=5e-4"])
    cfg.learner.batch_size_run  # 8

See `sections.py` for the fields, `presets.py` for where every number comes from, `loading.py` for
the resolution order, `validation.py` for the rules and their messages, `algorithms.py` for what
the configuration knows of each learner family.
"""

from common.config.loading import (
    DEFAULT_DATASET_KIND,
    DEFAULT_MAP,
    DEFAULT_METHOD,
    ConfigFile,
    all_keys,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    format_config,
    parse_override,
    read_config_file,
    resolve_config,
    write_config,
)
from common.config.presets import (
    METHOD_NAMES,
    METHODS,
    PAPER_MAPS,
    MapHyperparameters,
    MemoryCoefficient,
    Method,
    map_hyperparameters,
    preset,
    preset_config,
)
from common.config.sections import (
    CQL_SAMPLERS,
    CQL_VARIANTS,
    DATASET_KINDS,
    EXPLORATIONS,
    OVM_TARGETS,
    SECTIONS,
    ActorConfig,
    Config,
    ConfigError,
    EnvConfig,
    LearnerConfig,
    RateLimit,
    ReplayConfig,
    RunConfig,
    batch_split,
    derived_samples_per_insert,
    rate_limit,
)
from common.config.validation import problems, validate_config
from common.envs.factory import BACKENDS

__all__ = [
    "BACKENDS",
    "CQL_SAMPLERS",
    "CQL_VARIANTS",
    "DATASET_KINDS",
    "DEFAULT_DATASET_KIND",
    "DEFAULT_MAP",
    "DEFAULT_METHOD",
    "EXPLORATIONS",
    "METHODS",
    "METHOD_NAMES",
    "OVM_TARGETS",
    "PAPER_MAPS",
    "SECTIONS",
    "ActorConfig",
    "Config",
    "ConfigError",
    "ConfigFile",
    "EnvConfig",
    "LearnerConfig",
    "MapHyperparameters",
    "MemoryCoefficient",
    "Method",
    "RateLimit",
    "ReplayConfig",
    "RunConfig",
    "all_keys",
    "apply_overrides",
    "batch_split",
    "config_from_dict",
    "config_to_dict",
    "derived_samples_per_insert",
    "format_config",
    "map_hyperparameters",
    "parse_override",
    "preset",
    "preset_config",
    "problems",
    "rate_limit",
    "read_config_file",
    "resolve_config",
    "validate_config",
    "write_config",
]
