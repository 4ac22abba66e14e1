"""The learner's weight service (gRPC): each new weight version goes to every subscriber.

Calls on service `ovmse.WeightService`, all carrying raw bytes (no protobuf codegen needed):
- `Subscribe(have_version: int64 LE)` -> a server stream of encoded weights (common/weights_codec),
  starting with the newest version if it is newer than `have_version`, then each newer one. A slow
  subscriber skips intermediate versions: only the newest matters to an actor.
- `FetchLatest()` -> the newest encoded weights, or NOT_FOUND before the first publish.
- `FetchStart()` -> the weights the online phase started from (published with `start=True`), or
  NOT_FOUND. The evaluator scores them even when it connects after training has moved on, so
  "test win rate at the start of online training" never depends on process start-up order.
- `Report(JSON {actor, session, env_steps, episodes})` -> b"": an actor's running totals. The
  learner's global environment-step count (which drives epsilon, the memory coefficient and the
  run's budget) is the sum of the newest totals of every (actor, session); a restarted actor opens
  a new session, so nothing it reported before is lost or counted twice.
Versions only go forward; message sizes are bounded by `max_message_bytes` on both sides.

A Subscribe call whose metadata names the role `evaluator` (common/weight_protocol.ROLE_KEY) is
the run's evaluator: the service remembers the newest version it has handed to such a stream, so a
finished learner can keep serving until the evaluator has its final version (learner/process.py).

Access: with a `token` (common/auth.py), every call must carry it, or it is refused with
UNAUTHENTICATED before anything else happens (no weights, no report counted). Open Subscribe
streams are capped at `max_subscribers`; a stream beyond that is refused at once with
RESOURCE_EXHAUSTED, and `RESERVED_CALLS` more concurrent calls are kept for reports and fetches,
so idle streams can never stall the actors' progress reports (the run's clock).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from common.auth import authorized
from common.net import grpc_options
from common.weight_protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EVALUATOR_ROLE,
    ROLE_KEY,
    SERVICE,
    decode_version,
)
from common.weights_codec import encode_weights

RESERVED_CALLS = 16  # concurrent calls kept free of Subscribe streams, for reports and fetches


class WeightPublisher:
    """Serves weight versions to subscribers; `publish` is called by the learner."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_subscribers: int = 64,
        token: str | None = None,
    ):
        self.max_message_bytes = max_message_bytes
        self.max_subscribers = max_subscribers
        self._token = token
        self._streams = 0  # Subscribe streams open now
        self.refused = {"unauthenticated": 0, "subscribers": 0}  # calls turned away, by reason
        self._changed = threading.Condition()
        self._payload: bytes | None = None
        self._start_payload: bytes | None = None
        self._version = -1
        self._stopped = False
        self._progress: dict[tuple[int, str], tuple[int, int]] = {}  # (actor, session) -> totals
        self._finished: set[tuple[int, str]] = set()  # sessions that sent their last report
        self._restored: set[tuple[int, str]] = set()  # from a checkpoint, not heard from since
        self._evaluator_seen = False  # an evaluator has subscribed in this run (or a checkpoint says so)
        self._evaluator_version = -1  # the newest version handed to an evaluator's stream
        # One worker thread per open stream, plus RESERVED_CALLS for reports and fetches.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_subscribers + RESERVED_CALLS, thread_name_prefix="weights"),
            options=grpc_options(max_message_bytes),
            maximum_concurrent_rpcs=max_subscribers + RESERVED_CALLS,
        )
        handlers = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Subscribe": grpc.unary_stream_rpc_method_handler(self._subscribe),
                "FetchLatest": grpc.unary_unary_rpc_method_handler(self._fetch_latest),
                "FetchStart": grpc.unary_unary_rpc_method_handler(self._fetch_start),
                "Report": grpc.unary_unary_rpc_method_handler(self._report),
            },
        )
        self._server.add_generic_rpc_handlers((handlers,))
        self.port = self._server.add_insecure_port(f"{address}:{port}")
        if self.port == 0:
            raise OSError(f"weight service: cannot bind {address}:{port}")
        self.address = f"{address}:{self.port}"
        self._server.start()

    @property
    def version(self) -> int:
        return self._version

    def publish(
        self,
        state_dict: dict[str, torch.Tensor],
        version: int,
        extra: dict | None = None,
        start: bool = False,
    ) -> int:
        """Make `version` the newest (with JSON metadata `extra`); returns the message size in bytes.
        `start=True` also keeps it as the weights the online phase started from (FetchStart)."""
        if version <= self._version:
            raise ValueError(f"weight versions only go forward: {version} after {self._version}")
        payload = encode_weights(state_dict, version, extra=extra)
        if len(payload) > self.max_message_bytes:
            raise ValueError(
                f"weights message of {len(payload)} bytes exceeds max_message_bytes={self.max_message_bytes}"
            )
        with self._changed:
            self._payload, self._version = payload, version
            if start:
                self._start_payload = payload
            self._changed.notify_all()
        return len(payload)

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if not authorized(context.invocation_metadata(), self._token):
            with self._changed:
                self.refused["unauthenticated"] += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "this service needs the run's token")

    def _subscribe(self, request: bytes, context: grpc.ServicerContext):
        self._authorize(context)
        with self._changed:
            full = self._streams >= self.max_subscribers
            if full:
                self.refused["subscribers"] += 1
            else:
                self._streams += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"already {self.max_subscribers} subscribers")
        evaluator = dict(context.invocation_metadata()).get(ROLE_KEY) == EVALUATOR_ROLE
        if evaluator:
            with self._changed:
                self._evaluator_seen = True
        try:
            sent = decode_version(request)
            while not self._stopped and context.is_active():
                payload, sent = self._wait_for_newer(sent)
                if payload is not None:
                    yield payload
                    # Resumed only once gRPC has taken the message for sending.
                    if evaluator:
                        with self._changed:
                            self._evaluator_version = max(self._evaluator_version, sent)
        finally:
            with self._changed:
                self._streams -= 1

    @property
    def open_streams(self) -> int:
        return self._streams

    def _wait_for_newer(self, than: int, timeout: float = 0.5) -> tuple[bytes | None, int]:
        with self._changed:
            self._changed.wait_for(lambda: self._version > than or self._stopped, timeout=timeout)
            if self._stopped or self._version <= than:
                return None, than
            return self._payload, self._version

    def _fetch_latest(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._authorize(context)
        payload = self._payload
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no weights published yet")
        return payload

    def _fetch_start(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._authorize(context)
        payload = self._start_payload
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no starting weights published")
        return payload

    def _report(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._authorize(context)
        try:
            report = json.loads(request)
            key = (int(report["actor"]), str(report["session"]))
            totals = (int(report["env_steps"]), int(report["episodes"]))
            final = bool(report.get("final", False))
        except (ValueError, KeyError, TypeError):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "report needs actor, session, env_steps, episodes"
            )
        with self._changed:
            old = self._progress.get(key, (0, 0))
            self._progress[key] = (max(old[0], totals[0]), max(old[1], totals[1]))  # totals never go back
            if final:
                self._finished.add(key)
            elif key in self._restored:  # an actor that lived through the learner's restart
                self._restored.discard(key)
                self._finished.discard(key)
        return b""

    def sessions(self) -> list[list]:
        """[actor, session, env_steps, episodes, finished] of every actor session, for a checkpoint."""
        with self._changed:
            return [
                [actor, session, steps, episodes, (actor, session) in self._finished]
                for (actor, session), (steps, episodes) in self._progress.items()
            ]

    def restore_sessions(self, rows: list) -> None:
        """Totals saved by `sessions()` (a restarted learner continues the run's step count). A
        restored session counts as finished until it reports again: its actor may have died with the
        learner, and the run's end should not wait for it."""
        with self._changed:
            for actor, session, steps, episodes, *_ in rows:
                key = (int(actor), str(session))
                self._progress[key] = (int(steps), int(episodes))
                self._finished.add(key)
                self._restored.add(key)

    @property
    def evaluator_seen(self) -> bool:
        """Whether the run has an evaluator: one subscribed here, or `expect_evaluator` was called."""
        return self._evaluator_seen

    def expect_evaluator(self) -> None:
        """A restarted learner's checkpoint says the run has an evaluator, which may not have
        reconnected yet: the end of the run waits for it as for one that is connected."""
        with self._changed:
            self._evaluator_seen = True

    def evaluator_has(self, version: int) -> bool:
        """Whether an evaluator's stream has been handed `version` (or a newer one)."""
        with self._changed:
            return self._evaluator_version >= version

    def totals(self) -> tuple[int, int]:
        """(environment steps, episodes) reported by all actors together."""
        with self._changed:
            values = list(self._progress.values())
        return sum(v[0] for v in values), sum(v[1] for v in values)

    def all_actors_finished(self) -> bool:
        """Every actor session that ever reported has sent its final report."""
        with self._changed:
            return bool(self._progress) and set(self._progress) <= self._finished

    def actors_reporting(self) -> set[int]:
        with self._changed:
            return {actor for actor, _ in self._progress}

    def stop(self, grace: float = 0.5) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._server.stop(grace).wait()
