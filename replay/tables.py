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
# reach a batch: a bad one is dropped (and counted by the caller), never trained on.

DROP_REASONS = ("decode", "shape", "nonfinite", "invalid")
_FLOAT_FIELDS = ("state", "obs", "reward")


class BadItem(ValueError):
    """A replay item that must not be trained on. `reason` is one of DROP_REASONS; `actor_id` the
    actor the item says it came from (None when even that cannot be read)."""

    def __init__(self, reason: str, detail: str, actor_id: int | None = None):
        self.reason = reason
        self.detail = detail
        self.actor_id = actor_id
        super().__init__(f"{reason}: {detail}")


def _actor_of(columns: Sequence) -> int | None:
    try:
        meta = np.asarray(columns[len(STEP_FIELDS)], dtype=np.float64).reshape(-1)
        return int(meta[3]) if meta.size >= 4 and np.isfinite(meta[3]) else None
    except Exception:
        return None


def decode_checked(columns: Sequence[np.ndarray], source: str | None = None, expected=None) -> Episode:
    """`decode_item`, then `episode_problem`: the episode, or BadItem saying what is wrong.
    `expected` is the map's sizes (a `replay.dataset.MapLayout`) or None (shapes are only checked
    for consistency between fields)."""
    if len(columns) != len(ITEM_COLUMNS):
        raise BadItem("decode", f"{len(columns)} columns, expected {len(ITEM_COLUMNS)}", _actor_of(columns))
    try:
        episode = decode_item(columns, source)
    except Exception as error:
        raise BadItem("decode", f"{type(error).__name__}: {error}", _actor_of(columns)) from None
    problem = episode_problem(episode, expected)
    if problem is not None:
        raise BadItem(*problem, actor_id=episode.meta.actor_id)
    return episode


def episode_problem(episode: Episode, expected=None) -> tuple[str, str] | None:
    """(reason, detail) of the first thing wrong with `episode`, or None when it can be trained on:
    fields of one length and consistent (or the map's) shapes, finite numbers, actions in range and
    available where taken."""
    arrays = episode.arrays()
    if any(np.ndim(a) < 2 for a in arrays.values()):
        bad = next(k for k, a in arrays.items() if np.ndim(a) < 2)
        return "shape", f"{bad} has shape {np.shape(arrays[bad])}, expected [L + 1, ...]"
    rows = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(rows.values())) != 1 or rows["state"] < 2:
        return "shape", f"fields of different or too few rows: {rows}"
    n_rows = rows["state"]
    obs, avail, actions = arrays["obs"], arrays["avail_actions"], arrays["actions"]
    if obs.ndim != 3 or avail.ndim != 3 or actions.ndim != 3 or arrays["state"].ndim != 2:
        return "shape", (
            f"state {arrays['state'].shape}, obs {obs.shape}, actions {actions.shape}, "
            f"avail_actions {avail.shape}: wrong number of axes"
        )
    n_agents, n_actions = obs.shape[1], avail.shape[2]
    if expected is not None:
        want = {
            "state": (expected.state_size,),
            "obs": (expected.n_agents, expected.obs_size),
            "actions": (expected.n_agents, 1),
            "avail_actions": (expected.n_agents, expected.n_actions),
            "reward": (1,),
            "terminated": (1,),
            "filled": (1,),
        }
        for name, shape in want.items():
            if tuple(arrays[name].shape[1:]) != shape:
                got = tuple(arrays[name].shape[1:])
                return "shape", f"{name} has steps of shape {got}, this map's are {shape}"
        if n_rows > expected.episode_limit + 1:
            return "shape", f"{n_rows - 1} steps, more than the map's limit of {expected.episode_limit}"
    else:
        consistent = {
            "actions": (n_agents, 1),
            "avail_actions": (n_agents, n_actions),
            "reward": (1,),
            "terminated": (1,),
            "filled": (1,),
        }
        for name, shape in consistent.items():
            if tuple(arrays[name].shape[1:]) != shape:
                return "shape", f"{name} has steps of shape {tuple(arrays[name].shape[1:])}, expected {shape}"
    for name in _FLOAT_FIELDS:
        values = arrays[name]
        if values.dtype.kind not in "fiu" or not np.isfinite(values).all():
            return "nonfinite", f"{name} holds NaN or infinity"
    if not np.isfinite(episode.meta.episode_return):
        return "nonfinite", "the episode return is NaN or infinity"
    if actions.dtype.kind not in "iu":
        return "invalid", f"actions of type {actions.dtype}, expected integers"
    taken = actions[:-1, :, 0]  # the last row is the final observation: no action
    if taken.size and (taken.min() < 0 or taken.max() >= n_actions):
        return "invalid", f"actions outside [0, {n_actions})"
    if taken.size:
        chosen = np.take_along_axis(avail[:-1], taken[..., None].astype(np.int64), axis=-1)
        if not chosen.all():
            return "invalid", "an action taken that was not available"
    return None
