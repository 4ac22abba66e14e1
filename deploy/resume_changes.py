"""What a resumed run may change: `--resume RUN_DIR --set KEY=VALUE` for `ovmse run` and
`ovmse train --mode sync`. How long the run goes on and how it evaluates, logs and checkpoints may
change; everything else is what its checkpoints were made with."""

from __future__ import annotations

from pathlib import Path

from common.config import Config
from common.errors import InputError

# What `--resume RUN --set KEY=VALUE` may change: how long the run goes on and how it reports and
# checkpoints. Everything else (map, method, networks, learning rates, replay, seeds, the dataset)
# is what the checkpoints were made with.
RESUMABLE_KEYS = (
    "run.online_env_steps",
    "run.eval_interval_steps",
    "run.log_interval_s",
    "run.trainer_checkpoint_interval_s",
    "actor.test_episodes",
    "actor.final_test_episodes",
    "learner.checkpoint_interval",
    "learner.checkpoint_interval_s",
    "replay.checkpoint_interval_s",
)


def resume_overrides(saved: Config, overrides: list[str]) -> Config:
    """`saved` (a run's configuration) with `--set` overrides applied, each of a key in
    RESUMABLE_KEYS; raises InputError naming the first other key."""
    from common.config.loading import apply_overrides, parse_override

    for text in overrides:
        section, key, _ = parse_override(text)
        if f"{section}.{key}" not in RESUMABLE_KEYS:
            raise InputError(
                f"--set {section}.{key}: cannot be changed on --resume (the run's checkpoints were made "
                f"with it); these can: {', '.join(RESUMABLE_KEYS)}"
            )
    return apply_overrides(saved, overrides)


# Where a run and its inputs are, not what it is: a sweep directory copied or moved elsewhere
# resumes its trials with these changed (and the trainer state it resumes holds the rest).
LOCATION_KEYS = (
    "run.run_dir",
    "run.name",
    "run.dataset",
    "run.init_checkpoint",
    "run.auth_token_file",
    "run.metrics_port",
    "run.bind_address",
    "replay.checkpoint_dir",
    "replay.address",
    "replay.port",
    "actor.weight_server",
)


def check_resume_changes(run_dir: Path, cfg: Config) -> None:
    """Refuse, in one line naming the key, a configuration that differs from the run's own
    config.yaml in a field outside RESUMABLE_KEYS and LOCATION_KEYS (the one-process trainer's
    `--resume`)."""
    import yaml

    from common.config import format_config

    path = Path(run_dir) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(saved, dict):
        return
    now = yaml.safe_load(format_config(cfg))
    for section, values in now.items():
        for key, value in (values or {}).items():
            before = (saved.get(section) or {}).get(key, value)
            if before != value and f"{section}.{key}" not in RESUMABLE_KEYS + LOCATION_KEYS:
                raise InputError(
                    f"--set {section}.{key}: cannot be changed on --resume ({before!r} in {path}, "
                    f"{value!r} asked for); these can: {', '.join(RESUMABLE_KEYS)}"
                )
