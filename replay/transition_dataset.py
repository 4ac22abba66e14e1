"""Dataset files of single transitions for the continuous-action worlds (the particle worlds' offline
data; SMAC's episode files are replay/dataset.py's).

One HDF5 file: the seven `TransitionBatch` fields as datasets with a leading axis of N transitions,
gzip-compressed, and a JSON card in the root attribute `card`: the map, the dataset kind, how it was
made (policy, noise, seed), the action box, and the random and expert returns its normalised score
is measured against. Written under a temporary name and renamed into place; read back whole and
checked (every field present with the shapes the card's sizes give, finite values, actions inside
the box) before anything uses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.atomic_files import give_default_mode
from common.errors import InputError
from common.transitions import TRANSITION_FIELDS as FIELDS
from replay.staging import StagedWriter

SCHEMA = "ovmse-transitions-1"
CARD_KEYS = (
    "schema",
    "map",
    "kind",
    "transitions",
    "n_agents",
    "obs_size",
    "state_size",
    "action_size",
    "action_low",
    "action_high",
)


def _expected_shapes(card: dict, n: int) -> dict[str, tuple[int, ...]]:
    agents, obs, state, action = card["n_agents"], card["obs_size"], card["state_size"], card["action_size"]
    return {
        "obs": (n, agents, obs),
        "state": (n, state),
        "actions": (n, agents, action),
        "reward": (n,),
        "next_obs": (n, agents, obs),
        "next_state": (n, state),
        "terminal": (n,),
    }


def write_transition_dataset(path: str | os.PathLike, arrays: dict[str, np.ndarray], card: dict) -> Path:
    """Write `arrays` (the seven fields) with `card` (map, kind, action box, how it was made...);
    the sizes, the count and the schema are added to the card from the arrays."""
    import h5py

    n, agents, obs = arrays["obs"].shape
    full = {
        **card,
        "schema": SCHEMA,
        "transitions": int(n),
        "n_agents": int(agents),
        "obs_size": int(obs),
        "state_size": int(arrays["state"].shape[1]),
        "action_size": int(arrays["actions"].shape[2]),
    }
    _check(arrays, full, path)
    writer = _StagedFile(path)
    try:
        with h5py.File(writer._tmp, "w") as h5:
            for name in FIELDS:
                data = arrays[name].astype(bool if name == "terminal" else np.float32)
                h5.create_dataset(name, data=data, compression="gzip", compression_opts=1, shuffle=True)
            h5.attrs["card"] = json.dumps(full, sort_keys=True)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_transition_dataset(
    path: str | os.PathLike, map_name: str | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the card of a transition dataset, checked; `map_name` must match the card's."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such dataset file")
    try:
        with h5py.File(path, "r") as h5:
            if "card" not in h5.attrs:
                raise InputError(f"{path}: not a transition dataset (no card attribute)")
            card = json.loads(h5.attrs["card"])
            missing = [name for name in FIELDS if name not in h5]
            if missing:
                raise InputError(f"{path}: missing dataset field(s) {', '.join(missing)}")
            arrays = {name: h5[name][()] for name in FIELDS}
    except OSError as error:
        raise InputError(f"{path}: not an HDF5 file ({error})") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: card: not JSON") from None
    absent = [key for key in CARD_KEYS if key not in card]
    if absent:
        raise InputError(f"{path}: card: missing key(s) {', '.join(absent)}")
    if card["schema"] != SCHEMA:
        raise InputError(f"{path}: card.schema: {card['schema']!r}, this version reads {SCHEMA!r}")
    if map_name is not None and card["map"] != map_name:
        raise InputError(f"{path}: card.map: the dataset is for {card['map']!r}, this run is on {map_name!r}")
    _check(arrays, card, path)
    return arrays, card


def score_bounds(card: dict, where: str) -> tuple[float, float]:
    """The card's random and expert returns, the 0 and 100 of a normalised score; refused when
    missing, not finite, or when the expert does not beat random (every score would divide by a
    gap of zero or less)."""
    bounds = []
    for key in ("random_return", "expert_return"):
        value = card.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not np.isfinite(value):
            raise InputError(f"{where}: card.{key}: {value!r}; scores need a finite return")
        bounds.append(float(value))
    random_return, expert_return = bounds
    if expert_return <= random_return:
        raise InputError(
            f"{where}: card.expert_return: {expert_return:.2f} does not beat card.random_return "
            f"{random_return:.2f}, so no score can be normalised on it; make the dataset with an expert "
            "trained longer"
        )
    return random_return, expert_return


def _check(arrays: dict[str, np.ndarray], card: dict, path) -> None:
    unknown = sorted(set(arrays) - set(FIELDS))
    if unknown:
        raise InputError(f"{path}: unknown field(s) {', '.join(unknown)}")
    for name, shape in _expected_shapes(card, card["transitions"]).items():
        if name not in arrays:
            raise InputError(f"{path}: missing field {name}")
        if tuple(arrays[name].shape) != shape:
            raise InputError(
                f"{path}: {name}: shape {list(arrays[name].shape)}, the card's sizes give {list(shape)}"
            )
        if name != "terminal" and not np.isfinite(arrays[name]).all():
            row = int(np.argwhere(~np.isfinite(arrays[name]))[0][0])
            raise InputError(f"{path}: {name}: NaN or infinite value at transition {row}")
    low, high = card["action_low"], card["action_high"]
    outside = (arrays["actions"] < low) | (arrays["actions"] > high)
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise InputError(f"{path}: actions: transition {row} is outside the action box [{low}, {high}]")


class _StagedFile(StagedWriter):
    def close(self) -> Path:
        give_default_mode(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._tmp.unlink(missing_ok=True)
