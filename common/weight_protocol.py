"""The weight service's wire protocol, shared by the learner's server and the actors' clients:
method paths, the version field of a Subscribe request, and the message bounds. The calls
themselves are described in learner/weight_service.py; the payload format in common/weights_codec.py.
"""

from __future__ import annotations

import struct

SERVICE = "ovmse.WeightService"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
REPORT = f"/{SERVICE}/Report"
FETCH_LATEST = f"/{SERVICE}/FetchLatest"
FETCH_START = f"/{SERVICE}/FetchStart"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # what the service sends: weights (run.grpc_max_message_mb)
# What the service receives: its requests are tiny. Subscribe carries 8 bytes, the fetches none, and
# a progress report about 140 (`{"actor": 99999, "session": <32 hex>, "env_steps": <16 digits>,
# "episodes": <16 digits>, "final": false}`); 1 KiB leaves 7x that, and nothing bigger is read.
MAX_REQUEST_BYTES = 1024
# A call's request must arrive within this long once the service waits for it (a worker has taken
# the call), or the service cancels the call; an honest request arrives with its headers.
REQUEST_ARRIVAL_S = 10.0
# Subscribe metadata naming the subscriber's role: a finished learner keeps serving until the
# evaluator has been sent the final version, so it must tell the evaluator's stream from the actors'.
ROLE_KEY = "ovmse-role"
EVALUATOR_ROLE = "evaluator"


def encode_version(version: int) -> bytes:
    return struct.pack("<q", version)


def decode_version(request: bytes) -> int:
    return struct.unpack("<q", request)[0] if len(request) == 8 else -1
