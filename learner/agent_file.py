"""Exported agents: the acting network alone, for anyone to evaluate again (`ovmse export`, then
`ovmse evaluate --checkpoint agent.pt`). A few hundred KB where a learner checkpoint carries mixers,
targets, optimizer state and OVM's memory.

One `torch.save` of a plain dict, read back with `weights_only=True`:

    format    1
    kind      "ovmse-agent"
    identity  {"map", "method", "algorithm", "shape"}: what the weights were trained for
    weights   the acting network's state dict (CPU tensors), as `Learner.agent_state_dict()`
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from common.atomic_files import atomic_path
from common.errors import CheckpointError
from learner.checkpoint import NonFiniteWeights, first_nonfinite
from learner.interface import Learner

AGENT_KIND = "ovmse-agent"
AGENT_FORMAT = 1


def export_agent(learner: Learner, path: str | os.PathLike, map_name: str | None) -> Path:
    """Write `learner`'s acting network to `path` (atomically) with what it was trained for."""
    path = Path(path)
    weights = learner.agent_state_dict()
    bad = first_nonfinite(weights)
    if bad is not None:
        raise NonFiniteWeights(f"refusing to export {path}: {bad} holds NaN or infinity")
    payload = {
        "format": AGENT_FORMAT,
        "kind": AGENT_KIND,
        "identity": {
            "map": map_name,
            "method": learner.cfg.method,
            "algorithm": learner.cfg.algorithm,
            "shape": learner.network_shape(),
        },
        "weights": weights,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NOT_A_CHECKPOINT = "not a checkpoint or an exported agent"


def _load(path: Path) -> Any:
    """torch.load with weights_only=True; a file that is not one, in one line saying what it is."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        raise CheckpointError(
            path, f"{NOT_A_CHECKPOINT}: an HDF5 file (a dataset? see `ovmse dataset inspect`)"
        )
    if not head:
        raise CheckpointError(path, f"{NOT_A_CHECKPOINT}: the file is empty")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save: a zip, or a pickle
        raise CheckpointError(path, f"{NOT_A_CHECKPOINT}: not a file torch.save wrote")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise CheckpointError(
                path, f"{NOT_A_CHECKPOINT}: a torch file holding Python objects (not loaded)"
            ) from None
        raise CheckpointError(path, f"{NOT_A_CHECKPOINT}: truncated or corrupted") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same answer
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = first.split(". ")[0].rstrip(".")  # the first sentence: what failed, not the advice
        raise CheckpointError(path, f"{NOT_A_CHECKPOINT}: truncated or corrupted ({first[:120]})") from None


def read_agent(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(weights, identity) of an exported agent, read once; None when the file is something else
    (a learner checkpoint). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    payload = _load(path)
    if not isinstance(payload, dict) or payload.get("kind") != AGENT_KIND:
        return None
    if payload.get("format") != AGENT_FORMAT:
        raise CheckpointError(path, f"agent format {payload.get('format')!r} is not one this version reads")
    identity, weights = payload.get("identity"), payload.get("weights")
    if not isinstance(identity, dict) or not isinstance(weights, dict):
        raise CheckpointError(path, "not an exported agent (identity or weights missing)")
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(path, f"{bad} holds NaN or infinity")
    return weights, identity


def check_agent_map(path: str | os.PathLike, identity: dict, map_name: str) -> None:
    """Refuse an agent exported for another map than `map_name`."""
    if identity.get("map") not in (None, map_name):
        raise CheckpointError(path, f"exported for map {identity.get('map')}, not {map_name} (give --map)")
