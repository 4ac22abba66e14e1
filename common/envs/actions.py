"""Checking agents' actions against SMAC's availability masks before a battle world applies them.

Real SMAC silently turns some invalid actions into no-ops and asserts on others; every world here
rejects them up front instead, with a message that names the battle, the agent and the action, so
a learner bug surfaces where it happens rather than as a quietly wrong dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def validate_actions(actions: Any, avail: Any, n_actions: int) -> np.ndarray:
    """Return `actions` as int64 after checking them against `avail`.

    `actions` is [n_agents] for one battle or [B, n_agents] for a batch; `avail` is the matching
    availability mask [..., n_agents, n_actions] (bool or 0/1 ints). Raises ValueError for a wrong
    shape, a non-integer value, an index outside [0, n_actions) or an action the agent may not take.
    """
    avail_arr = np.asarray(avail).astype(bool, copy=False)
    if avail_arr.ndim < 2 or avail_arr.shape[-1] != n_actions:
        raise ValueError(
            f"availability mask must have shape [..., n_agents, {n_actions}], got {avail_arr.shape}"
        )
    if hasattr(actions, "detach"):  # a torch tensor, possibly on a GPU, as PyMARL-style runners pass
        actions = actions.detach().cpu().numpy()
    raw = np.asarray(actions)
    expected = avail_arr.shape[:-1]
    if raw.shape != expected:
        raise ValueError(f"actions must have shape {expected} (one per agent), got {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.issubdtype(raw.dtype, np.number):
            raise ValueError(f"actions must be integers, got dtype {raw.dtype}")
        # Integral floats (e.g. from a float tensor) are fine; 2.5 is not an action.
        integral = np.isfinite(raw) & (raw == np.round(raw))
        if not integral.all():
            where = _first(~integral)
            raise ValueError(
                f"invalid action for {_who(where)}: action {float(raw[where])} is not an integer"
            )
    acts = raw.astype(np.int64)

    out_of_range = (acts < 0) | (acts >= n_actions)
    if out_of_range.any():
        where = _first(out_of_range)
        raise ValueError(
            f"invalid action for {_who(where)}: action {int(acts[where])} is out of range [0, {n_actions})"
        )

    chosen = np.take_along_axis(avail_arr, acts[..., None], axis=-1)[..., 0]
    if not chosen.all():
        where = _first(~chosen)
        action, allowed = int(acts[where]), np.flatnonzero(avail_arr[where]).tolist()
        raise ValueError(
            f"invalid action for {_who(where)}: action {action} is not available (available: {allowed})"
        )
    return acts


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry (row-major), so the error names one concrete agent."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _who(index: tuple[int, ...]) -> str:
    *battle, agent = index
    if not battle:
        return f"agent {agent}"
    return f"battle {battle[0] if len(battle) == 1 else tuple(battle)}, agent {agent}"
