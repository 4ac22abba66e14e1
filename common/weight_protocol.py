"""The weight service's wire protocol, shared by the learner's server and the actors' clients:
method paths, the version field of a Subscribe request, and the default message bound. The calls
themselves are described in learner/weight_service.py; the payload format in common/weights_codec.py.
"""

from __future__ import annotations

import struct

SERVICE = "ovmse.WeightService"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
REPORT = f"/{SERVICE}/Report"
FETCH_LATEST = f"/{SERVICE}/FetchLatest"
FETCH_START = f"/{SERVICE}/FetchStart"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
# Subscribe metadata naming the subscriber's role: a finished learner keeps serving until the
# evaluator has been sent the final version, so it must tell the evaluator's stream from the actors'.
ROLE_KEY = "ovmse-role"
EVALUATOR_ROLE = "evaluator"


def encode_version(version: int) -> bytes:
    return struct.pack("<q", version)


def decode_version(request: bytes) -> int:
    return struct.unpack("<q", request)[0] if len(request) == 8 else -1
