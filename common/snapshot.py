"""The state of live objects (a world mid-battle, a rollout worker, an episode store) as tensors and
plain values only, so that it can be saved with `torch.save` and read back with
`weights_only=True`, and so that reading it back never builds an object of a class the file names:

    tree = capture(obj)      # walks obj's attributes
    restore(obj, tree)       # writes them back into an object built the same way (same config)

Arrays become tensors (their dtype kept), numpy generators their bit-generator state, torch modules
their state dicts; lists, tuples, deques and dicts are walked; other objects are walked attribute by
attribute and restored in place, so the object being restored into must already hold one of the
same class; a class lists in `SNAPSHOT_SKIP` the attributes its constructor makes the same every
time (a map's constants), which are left out. The only objects `restore` creates are the
dataclasses of `CONSTRUCTIBLE` (episodes and observations), from their fields. Functions, classes
and modules are left out: a fresh object built
from the same configuration already has them.
"""

from __future__ import annotations

import collections
import dataclasses
import types
from typing import Any

import numpy as np
import torch

from common.envs.protocol import BatchObservation
from common.episode import Episode, EpisodeMeta

TAG = "$snapshot"
# The classes `restore` may build from a snapshot's fields (by name; nothing else is ever built).
CONSTRUCTIBLE: dict[str, type] = {cls.__name__: cls for cls in (Episode, EpisodeMeta, BatchObservation)}
PLAIN = (type(None), bool, int, float, str)


class SnapshotError(ValueError):
    """A snapshot that does not fit the object it is restored into."""


def capture(value: Any, path: str = "") -> Any:
    """`value` as tensors and plain values (see the module doc)."""
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise SnapshotError(f"{path}: an array of Python objects cannot be saved")
        return {TAG: "array", "t": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return {TAG: "scalar", "t": torch.from_numpy(np.asarray(value).copy())}
    if isinstance(value, np.random.Generator):
        return {TAG: "rng", "state": value.bit_generator.state}
    if isinstance(value, torch.Tensor):
        return {TAG: "tensor", "t": value.detach().clone()}
    if isinstance(value, torch.nn.Module):
        return {TAG: "module", "state": {k: v.detach().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, collections.deque):
        return {TAG: "deque", "maxlen": value.maxlen, "items": [capture(v, f"{path}[]") for v in value]}
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {TAG: kind, "items": [capture(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise SnapshotError(f"{path}: dict keys must be str or int")
        return {
            TAG: "dict",
            "keys": list(value),
            "values": [capture(v, f"{path}[{k!r}]") for k, v in value.items()],
        }
    if dataclasses.is_dataclass(value) and type(value).__name__ in CONSTRUCTIBLE:
        fields = {
            f.name: capture(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)
        }
        return {TAG: "dataclass", "class": type(value).__name__, "fields": fields}
    if hasattr(value, "__dict__") and not _skipped(value):
        left_out = getattr(type(value), "SNAPSHOT_SKIP", ())
        attrs = {
            name: capture(v, f"{path}.{name}")
            for name, v in vars(value).items()
            if not _skipped(v) and name not in left_out
        }
        return {TAG: "object", "class": type(value).__qualname__, "attrs": attrs}
    raise SnapshotError(f"{path}: cannot save a {type(value).__name__}")


def _skipped(value: Any) -> bool:
    """What a fresh object already has: functions, methods, classes and modules."""
    return isinstance(
        value, type | types.FunctionType | types.BuiltinFunctionType | types.MethodType | types.ModuleType
    ) or (callable(value) and not hasattr(value, "__dict__"))


def restore(current: Any, tree: Any, path: str = "") -> Any:
    """The value `tree` describes; objects are restored into `current` in place (and returned)."""
    if not isinstance(tree, dict) or TAG not in tree:
        if not isinstance(tree, PLAIN):
            raise SnapshotError(f"{path}: unexpected {type(tree).__name__} in the snapshot")
        return tree
    kind = tree[TAG]
    if kind == "array":
        return tree["t"].numpy().copy()
    if kind == "scalar":
        return tree["t"].numpy()[()]
    if kind == "rng":
        rng = current if isinstance(current, np.random.Generator) else np.random.default_rng()
        rng.bit_generator.state = tree["state"]
        return rng
    if kind == "tensor":
        return tree["t"].clone()
    if kind == "module":
        if not isinstance(current, torch.nn.Module):
            raise SnapshotError(f"{path}: a module's weights, but no module to load them into")
        current.load_state_dict(tree["state"])
        return current
    if kind in ("list", "tuple", "deque"):
        old = list(current) if isinstance(current, list | tuple | collections.deque) else []
        items = [
            restore(old[i] if i < len(old) else None, item, f"{path}[{i}]")
            for i, item in enumerate(tree["items"])
        ]
        if kind == "deque":
            return collections.deque(items, maxlen=tree["maxlen"])
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        old = current if isinstance(current, dict) else {}
        return {
            k: restore(old.get(k), v, f"{path}[{k!r}]")
            for k, v in zip(tree["keys"], tree["values"], strict=True)
        }
    if kind == "dataclass":
        cls = CONSTRUCTIBLE.get(tree["class"])
        if cls is None:
            raise SnapshotError(f"{path}: {tree['class']} is not a class a snapshot may build")
        return cls(
            **{k: restore(getattr(current, k, None), v, f"{path}.{k}") for k, v in tree["fields"].items()}
        )
    if kind == "object":
        if current is None or type(current).__qualname__ != tree["class"]:
            raise SnapshotError(
                f"{path}: the snapshot holds a {tree['class']}, the object has {type(current).__qualname__}"
            )
        for name, value in tree["attrs"].items():
            setattr(current, name, restore(getattr(current, name, None), value, f"{path}.{name}"))
        return current
    raise SnapshotError(f"{path}: unknown snapshot entry {kind!r}")
