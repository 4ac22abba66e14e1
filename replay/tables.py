"""What the replay tables hold, shared by the server, its writers and the learner's sampler.

Two tables: `offline` (the dataset) and `online` (the actors' episodes). One item = one whole
episode: the seven schema fields, each [L + 1, ...] (no padding), plus a float64 `meta` column [5]:
return, battle_won, policy_version, actor_id, offline (1.0) / online.

Reverb is imported inside `import_reverb`: it pulls in TensorFlow (seconds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from common.episode import FIELD_DTYPES, STEP_FIELDS, Episode, EpisodeMeta
from common.episode_checks import episode_problem

OFFLINE_TABLE = "offline"
ONLINE_TABLE = "online"
TABLES = (OFFLINE_TABLE, ONLINE_TABLE)

ITEM_COLUMNS = (*STEP_FIELDS, "meta")
META_FIELDS = ("episode_return", "battle_won", "policy_version", "actor_id", "offline")


def encode_episode(episode: Episode) -> list[np.ndarray]:
    """The columns of one item, in ITEM_COLUMNS order (a list keeps Reverb's column order ours)."""
    meta = episode.meta
    columns = [np.ascontiguousarray(getattr(episode, name), dtype=FIELD_DTYPES[name]) for name in STEP_FIELDS]
    columns.append(
        np.array(
            [
                meta.episode_return,
                float(meta.battle_won),
                meta.policy_version,
                meta.actor_id,
                1.0 if meta.source == "offline" else 0.0,
            ],
            dtype=np.float64,
        )
    )
    return columns


def decode_item(columns: Sequence[np.ndarray], source: str | None = None) -> Episode:
    """An Episode from a sampled item's columns (each with Reverb's leading sequence axis of 1).
    `source` overrides the stored one (the sampler knows which table the item came from)."""
    arrays = [np.asarray(c)[0] if np.ndim(c) and np.shape(c)[0] == 1 else np.asarray(c) for c in columns]
    meta = arrays[len(STEP_FIELDS)]
    return Episode(
        *arrays[: len(STEP_FIELDS)],
        meta=EpisodeMeta(
            episode_return=float(meta[0]),
            battle_won=bool(meta[1]),
            policy_version=int(meta[2]),
            actor_id=int(meta[3]),
            source=source or ("offline" if meta[4] > 0.5 else "online"),
        ),
    )


def import_reverb():
    """Reverb, with TensorFlow's C++ INFO lines silenced unless the user asked for them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import reverb

    return reverb


# --- checking items at the boundary --------------------------------------------------------------
# The online table takes whatever a client inserts. Every sampled item is checked before it can
# reach a batch (`common.episode_checks`, the same check the dataset reader and the one-process
# replay use): a bad one is dropped (counted by the caller and deleted from its table), never
# trained on.


class BadItem(ValueError):
    """A replay item that must not be trained on. `reason` is one of
    `common.episode_checks.DROP_REASONS`, `field` the episode field at fault; `actor_id` the actor
    the item says it came from (None when even that cannot be read)."""

    def __init__(self, reason: str, detail: str, actor_id: int | None = None, field: str = "item"):
        self.reason = reason
        self.detail = detail
        self.field = field
        self.actor_id = actor_id
        super().__init__(f"{reason}: {field}: {detail}")


def _actor_of(columns: Sequence) -> int | None:
    try:
        meta = np.asarray(columns[len(STEP_FIELDS)], dtype=np.float64).reshape(-1)
        return int(meta[3]) if meta.size >= 4 and np.isfinite(meta[3]) else None
    except Exception:
        return None


def decode_checked(columns: Sequence[np.ndarray], source: str | None = None, expected=None) -> Episode:
    """`decode_item`, then `common.episode_checks.episode_problem`: the episode, or BadItem saying
    what is wrong. `expected` is the map's `MapLayout` (sizes and the world's bounds) or None
    (shapes are only checked for consistency between fields)."""
    if len(columns) != len(ITEM_COLUMNS):
        raise BadItem("decode", f"{len(columns)} columns, expected {len(ITEM_COLUMNS)}", _actor_of(columns))
    try:
        episode = decode_item(columns, source)
    except Exception as error:
        raise BadItem("decode", f"{type(error).__name__}: {error}", _actor_of(columns)) from None
    problem = episode_problem(episode, expected)
    if problem is not None:
        raise BadItem(problem.reason, problem.detail, episode.meta.actor_id, problem.field)
    return episode
