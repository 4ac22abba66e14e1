"""A plain binary format for network weights on the wire (no pickle).

Layout: b"OVMW" | u32 header length | JSON header | raw little-endian tensor bytes in header order.
The header holds the policy version, the publish time (for latency metrics), small JSON metadata
from the learner (e.g. the global environment-step count that drives the actors' schedules) and,
per tensor, its name, dtype and shape. Decoding checks every size before building tensors.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field

import numpy as np
import torch

MAGIC = b"OVMW"
_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


@dataclass
class WeightsMessage:
    version: int
    state_dict: dict[str, torch.Tensor]
    published_at: float  # time.time() at the publisher
    extra: dict = field(default_factory=dict)  # JSON metadata, e.g. {"env_steps": 12345}


def encode_weights(
    state_dict: dict[str, torch.Tensor],
    version: int,
    published_at: float | None = None,
    extra: dict | None = None,
) -> bytes:
    entries, blobs = [], []
    for name, tensor in state_dict.items():
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"weights: tensor {name} has unsupported dtype {tensor.dtype}")
        array = tensor.detach().to("cpu").contiguous().numpy()
        entries.append({"name": name, "dtype": _DTYPES[tensor.dtype], "shape": list(array.shape)})
        blobs.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    header = json.dumps(
        {"version": int(version), "published_at": time.time() if published_at is None else published_at,
         "extra": extra or {}, "tensors": entries}
    ).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])


def decode_weights(payload: bytes) -> WeightsMessage:
    if payload[:4] != MAGIC or len(payload) < 8:
        raise ValueError("weights: not an OVMW message")
    (header_len,) = struct.unpack("<I", payload[4:8])
    try:
        header = json.loads(payload[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"weights: unreadable header ({error})") from None
    offset = 8 + header_len
    state: dict[str, torch.Tensor] = {}
    for entry in header["tensors"]:
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        count = int(np.prod(entry["shape"], dtype=np.int64))
        size = count * dtype.itemsize
        if offset + size > len(payload):
            raise ValueError(f"weights: message truncated in tensor {entry['name']}")
        array = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(entry["shape"])
        state[entry["name"]] = torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
        offset += size
    if offset != len(payload):
        raise ValueError(f"weights: {len(payload) - offset} unexpected trailing bytes")
    extra = header.get("extra", {})
    return WeightsMessage(int(header["version"]), state, float(header["published_at"]), extra)
