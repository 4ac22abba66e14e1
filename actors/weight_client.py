"""Receiving weights from the learner's weight service (described in learner/weight_service.py).

`WeightSubscriber` keeps a server stream open in a background thread and holds the newest version
received; the acting loop takes it when convenient (the rollout worker then applies it per battle at
the next episode boundary). When the learner goes away the subscriber reconnects with exponential
backoff and asks for anything newer than what it has, so versions never go backwards.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid

import grpc

from common.auth import call_metadata
from common.net import client_options
from common.weight_protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FETCH_LATEST,
    FETCH_START,
    REPORT,
    ROLE_KEY,
    SUBSCRIBE,
    encode_version,
)
from common.weights_codec import WeightsMessage, decode_weights

log = logging.getLogger(__name__)
UNAUTHENTICATED_HINT = (
    "missing or wrong token (give it the learner's: OVMSE_TOKEN or run.auth_token_file; "
    "see docs/reliability.md)"
)


def fetch_latest(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    timeout: float = 10.0,
    token: str | None = None,
) -> WeightsMessage | None:
    """The newest weights, or None when the learner has published none yet."""
    return _fetch(FETCH_LATEST, target, max_message_bytes, timeout, token)


def fetch_start(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    timeout: float = 10.0,
    token: str | None = None,
) -> WeightsMessage | None:
    """The weights the online phase started from, or None when the learner has none to offer
    (not published yet, or a learner resumed from a checkpoint mid-run)."""
    return _fetch(FETCH_START, target, max_message_bytes, timeout, token)


def _fetch(
    method: str, target: str, max_message_bytes: int, timeout: float, token: str | None
) -> WeightsMessage | None:
    with grpc.insecure_channel(target, options=client_options(max_message_bytes)) as channel:
        call = channel.unary_unary(method)
        try:
            return decode_weights(
                call(b"", timeout=timeout, wait_for_ready=True, metadata=call_metadata(token))
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


# How the learner refuses a report it will not count (learner/progress_reports.py).
REFUSED_REPORT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class ProgressReporter:
    """Sends this actor's running totals to the learner (best effort: a report that cannot be
    delivered is simply superseded by the next one). The first refusal of each kind is logged with
    the learner's reason (a missing token; an actor id that is not the run's; a bound broken)."""

    def __init__(self, target: str, actor_id: int, timeout_s: float = 2.0, token: str | None = None):
        self.actor_id = actor_id
        self._metadata = call_metadata(token)
        self.session = uuid.uuid4().hex
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=client_options(1 << 20))
        self._report = self._channel.unary_unary(REPORT)
        self.failures = 0
        self._told: set[grpc.StatusCode] = set()  # refusals already logged

    def report(self, env_steps: int, episodes: int, final: bool = False) -> bool:
        body = json.dumps(
            {
                "actor": self.actor_id,
                "session": self.session,
                "env_steps": int(env_steps),
                "episodes": int(episodes),
                "final": final,
            }
        ).encode()
        try:
            self._report(body, timeout=self.timeout_s, metadata=self._metadata)
            return True
        except grpc.RpcError as error:
            self.failures += 1
            code = error.code()
            if code in self._told:
                return False
            if code == grpc.StatusCode.UNAUTHENTICATED:
                self._told.add(code)
                log.error("the learner refused this actor's reports: %s", UNAUTHENTICATED_HINT)
            elif code in REFUSED_REPORT:  # the learner's bounds on reports: said once per kind
                self._told.add(code)
                log.error("the learner refused a report of actor %d: %s", self.actor_id, error.details())
            return False

    def close(self) -> None:
        self._channel.close()


class WeightSubscriber:
    def __init__(
        self,
        target: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        have_version: int = -1,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        token: str | None = None,
        role: str = "actor",
    ):
        self.target = target
        self.token = token
        self.role = role  # sent with Subscribe: the learner waits at the end for an evaluator's stream
        self.max_message_bytes = max_message_bytes
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._version = have_version
        self._newest: WeightsMessage | None = None
        self._taken = have_version
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._call = None
        self.reconnects = 0
        self.refused = 0  # streams refused for a missing or wrong token
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self._thread = threading.Thread(target=self._run, name="weight-subscriber", daemon=True)

    def start(self) -> WeightSubscriber:
        self._thread.start()
        return self

    @property
    def version(self) -> int:
        """The newest version received."""
        return self._version

    def take(self) -> WeightsMessage | None:
        """The newest weights if they are newer than the last ones taken, else None."""
        with self._lock:
            if self._newest is None or self._newest.version <= self._taken:
                return None
            self._taken = self._newest.version
            return self._newest

    def wait_for_version(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._version < version and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._version >= version

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            channel = grpc.insecure_channel(self.target, options=client_options(self.max_message_bytes))
            try:
                subscribe = channel.unary_stream(SUBSCRIBE)
                metadata = (*(call_metadata(self.token) or ()), (ROLE_KEY, self.role))
                self._call = subscribe(encode_version(self._version), wait_for_ready=True, metadata=metadata)
                for payload in self._call:
                    message = decode_weights(payload)
                    self.latencies_s.append(max(0.0, time.time() - message.published_at))
                    with self._lock:
                        if message.version > self._version:
                            self._newest, self._version = message, message.version
                    backoff = self.min_backoff_s
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED and not self.refused:
                    log.error(
                        "the weight service at %s refused this client: %s", self.target, UNAUTHENTICATED_HINT
                    )
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.refused += 1
                elif not self._stop.is_set():
                    log.info(
                        "weight stream from %s ended (%s); reconnecting in %.1fs",
                        self.target,
                        error.code(),
                        backoff,
                    )
            except ValueError as error:  # a malformed message: drop the stream, try again
                log.warning("bad weights message from %s: %s", self.target, error)
            finally:
                channel.close()
            if self._stop.wait(backoff):
                break
            self.reconnects += 1
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)
