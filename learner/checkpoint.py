"""Learner checkpoints: one file with everything a resumed learner needs, checked before it is used.

The state is the learner's `state_dict()` (networks, targets, OVM's offline memory, the
behaviour-cloning policy, optimizers, counters, the CQL sampler's RNG) plus the caller's own
counters (`extra`: phase, environment steps, episodes seen, ... as plain values). A resumed learner's
next update is exactly the one the uninterrupted learner would have made, given the same batch.

File layout (format 2), one `torch.save` of a plain dict:

    format    2
    kind      "ovmse-learner-checkpoint"
    identity  {"map": map name or None, "method": learner.method, "shape": network sizes}
    sha256    hex digest of `body` followed by the identity as sorted JSON
    body      uint8 tensor: the bytes of torch.save({"learner": state, "extra": extra})

Loading checks, in this order, and refuses with a `CheckpointError` (one line: the path and what is
wrong) a missing, empty, truncated or non-torch file; a file holding anything but tensors and plain
values (read with `weights_only=True`: a pickled object is refused and its code never runs); a
file that is not an ovmse learner checkpoint; a checksum that does not match (flipped bytes); a
checkpoint of another map or network shape. The method is recorded but not enforced: a checkpoint
pre-trained for one method may start another (e.g. OVMSE and Switch CQL from the same start).

Format 1 (files written before checksums, `{"learner": ..., "extra": ...}`) still loads, with a
warning that it was not verified; its network shape is still checked.

Writes go to a temporary file in the same directory, then `os.replace`, so a crash never leaves a
half-written checkpoint. A learner whose weights are not finite is never written
(`NonFiniteWeights`): the last good checkpoint stays.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.atomic_files import give_default_mode
from common.errors import CheckpointError, RunHalted
from learner.interface import Learner

log = logging.getLogger(__name__)

FORMAT = 2
KIND = "ovmse-learner-checkpoint"


class NonFiniteWeights(RunHalted):
    """The learner's weights hold NaN or infinity: they are neither published nor checkpointed."""


def first_nonfinite(tensors: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in a nested dict/list that holds NaN or inf."""
    if isinstance(tensors, torch.Tensor):
        if tensors.is_floating_point() and not bool(torch.isfinite(tensors).all()):
            return prefix or "tensor"
        return None
    if isinstance(tensors, dict):
        items = tensors.items()
    elif isinstance(tensors, (list, tuple)):
        items = enumerate(tensors)
    else:
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def _digest(body: bytes, identity: dict) -> str:
    h = hashlib.sha256(body)
    h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()


def save_checkpoint(
    learner: Learner,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    map_name: str | None = None,
) -> Path:
    """Atomically write the learner's state (and `extra`) to `path`, with its identity (`map_name`,
    method, network shape) and checksum; returns the path. Raises NonFiniteWeights (writing
    nothing) when any weight or optimizer moment is NaN or infinite."""
    path = Path(path)
    state = learner.state_dict()
    bad = first_nonfinite(state)
    if bad is not None:
        raise NonFiniteWeights(f"refusing to write the checkpoint {path}: {bad} holds NaN or infinity")
    buffer = io.BytesIO()
    torch.save({"learner": state, "extra": dict(extra or {})}, buffer)
    body = buffer.getvalue()
    identity = {"map": map_name, "method": learner.cfg.method, "shape": learner.network_shape()}
    payload = {
        "format": FORMAT,
        "kind": KIND,
        "identity": identity,
        "sha256": _digest(body, identity),
        "body": torch.frombuffer(bytearray(body), dtype=torch.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        give_default_mode(tmp)  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path, source, what: str) -> Any:
    """torch.load with weights_only=True, every failure as one CheckpointError line."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise CheckpointError(
                path,
                f"refused: {what} holds Python objects, not only tensors and plain values "
                "(it was not unpickled)",
            ) from None
        raise CheckpointError(path, f"not a readable checkpoint ({what} is corrupted or truncated)") from None
    except Exception as error:  # garbage makes the unpickler fail in many ways: all mean the same
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            path, f"not a readable checkpoint ({what} is truncated, corrupted or not a torch file: {first})"
        ) from None


def read_checkpoint(
    path: str | os.PathLike, map_name: str | None = None, shape: dict | None = None
) -> tuple[dict, dict, dict]:
    """Read and verify `path`; returns (learner state, extra, identity). `map_name` and `shape`,
    when given, must match the checkpoint's. Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file, not a checkpoint")
    payload = _read(path, path, "the file")
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"not an ovmse learner checkpoint (holds a {type(payload).__name__})")
    if payload.get("kind") == KIND:
        if payload.get("format") != FORMAT:
            raise CheckpointError(
                path, f"checkpoint format {payload.get('format')!r} is not one this version reads ({FORMAT})"
            )
        identity, body = payload.get("identity"), payload.get("body")
        if not isinstance(identity, dict) or not isinstance(body, torch.Tensor) or body.dtype != torch.uint8:
            raise CheckpointError(path, "not an ovmse learner checkpoint (identity or body missing)")
        data = body.contiguous().numpy().tobytes()
        if _digest(data, identity) != payload.get("sha256"):
            raise CheckpointError(
                path, "checksum mismatch: the file is corrupted (its bytes changed after it was written)"
            )
        _check_identity(path, identity, map_name, shape)
        inner = _read(path, io.BytesIO(data), "the checkpoint's body")
        if not isinstance(inner, dict) or "learner" not in inner:
            raise CheckpointError(path, "not an ovmse learner checkpoint (no learner state)")
        return inner["learner"], dict(inner.get("extra") or {}), identity
    if "learner" in payload and isinstance(payload["learner"], dict):  # format 1: no checksum
        log.warning("%s: written before checkpoints carried a checksum; loaded without verification", path)
        state = payload["learner"]
        identity = {"map": None, "method": None, "shape": state.get("shape")}
        _check_identity(path, identity, map_name, shape)
        return state, dict(payload.get("extra") or {}), identity
    raise CheckpointError(path, "not an ovmse learner checkpoint (no learner state)")


def _check_identity(path: Path, identity: dict, map_name: str | None, shape: dict | None) -> None:
    theirs = identity.get("map")
    if map_name is not None and theirs is not None and theirs != map_name:
        raise CheckpointError(path, f"checkpoint is for map {theirs}, this run is on {map_name}")
    if shape is not None and identity.get("shape") != shape:
        saved = identity.get("shape") or {}
        if not isinstance(saved, dict):
            saved = {}
        diff = ", ".join(
            f"{key} {saved.get(key)} (this learner: {value})"
            for key, value in shape.items()
            if saved.get(key) != value
        )
        raise CheckpointError(path, f"checkpoint is for networks of another shape: {diff or saved}")


def load_checkpoint(learner: Learner, path: str | os.PathLike, map_name: str | None = None) -> dict[str, Any]:
    """Restore `learner` (built with the same env info and config) from `path`; returns `extra`.
    With `map_name`, a checkpoint written for another map is refused. Raises CheckpointError."""
    state, extra, _ = read_checkpoint(path, map_name=map_name, shape=learner.network_shape())
    state = to_device(state, learner.device)
    try:
        learner.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(path, f"does not fit this learner: {first}") from None
    return extra


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value
