"""The learner's weight service (gRPC): each new weight version goes to every subscriber.

Calls on service `ovmse.WeightService`, all carrying raw bytes (no protobuf codegen needed):
- `Subscribe(have_version: int64 LE)` -> a server stream of encoded weights (common/weights_codec),
  starting with the newest version if it is newer than `have_version`, then each newer one. A slow
  subscriber skips intermediate versions: only the newest matters to an actor.
- `FetchLatest()` -> the newest encoded weights, or NOT_FOUND before the first publish.
- `FetchStart()` -> the weights the online phase started from (published with `start=True`), or
  NOT_FOUND. The evaluator scores them even when it connects after training has moved on, so
  "test win rate at the start of online training" never depends on process start-up order.
- `Report(JSON {actor, session, env_steps, episodes, final})` -> b"": an actor's running totals.
  The learner's global environment-step count (which drives epsilon, the memory coefficient and the
  run's budget) is the sum of the newest totals of every (actor, session); a restarted actor opens
  a new session, so nothing it reported before is lost or counted twice. A report is held to what
  the run's actors can have done (learner/progress_reports.py): a malformed one is refused with
  INVALID_ARGUMENT, one from an actor that is not the run's with PERMISSION_DENIED, one claiming
  more steps than its actor can have played since its last report with OUT_OF_RANGE; each refusal
  is logged with the actor id and counted in `refused`, and nothing of it is applied.
Versions only go forward. The service sends messages of up to `max_message_bytes` (weights) and
receives at most MAX_REQUEST_BYTES (its requests are small); a call whose request has not arrived
`request_arrival_s` after the service began waiting for it is cancelled, so it gives its slot and
thread back.

A Subscribe call whose metadata names the role `evaluator` (common/weight_protocol.ROLE_KEY) is
the run's evaluator: the service remembers the newest version it has handed to such a stream, so a
finished learner can keep serving until the evaluator has its final version (learner/process.py).

Access: with a `token` (common/auth.py), every call must carry it, or it is refused with
UNAUTHENTICATED by an interceptor that sees only the call's headers: before its request is read,
without a worker waiting for it (no weights, no report counted; refusals are logged, at most one
line per LOG_EVERY_S). Open Subscribe streams are capped at `max_subscribers`; a stream beyond
that is refused at once with RESOURCE_EXHAUSTED, and `RESERVED_CALLS` more concurrent calls are
kept for reports and fetches, so idle streams can never stall the actors' progress reports (the
run's clock).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from common.auth import TokenInterceptor
from common.weight_protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EVALUATOR_ROLE,
    MAX_REQUEST_BYTES,
    REQUEST_ARRIVAL_S,
    ROLE_KEY,
    SERVICE,
    decode_version,
)
from common.weights_codec import encode_weights
from learner.progress_reports import BadReport, ProgressLedger, ReportBounds, ReportRefused, parse_report

log = logging.getLogger(__name__)
RESERVED_CALLS = 16  # concurrent calls kept free of Subscribe streams, for reports and fetches
LOG_EVERY_S = 10.0  # at most one log line per this many seconds for each kind of refused call
REFUSED_REPORT_CODES = {
    "unknown_actor": grpc.StatusCode.PERMISSION_DENIED,
    "sessions": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_fast": grpc.StatusCode.OUT_OF_RANGE,
}


class _Throttled:
    """Log lines that an intruder can provoke at will: at most one per `every_s` for each key, the
    next one saying how many were left out in between."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return
            self._last[key] = now
            skipped = self._skipped.pop(key, 0)
        if skipped:
            message += f" ({skipped} more like it in the last {self.every_s:.0f}s)"
        log.warning(message, *args)


class _ArrivalDeadlines:
    """gRPC Python has no server-side deadline for a call's request to arrive: a unary handler
    waits for it as long as the client keeps the call open, holding a worker thread and a
    concurrent-call slot. The service's handlers read their request under `watch`; one background
    thread cancels every call whose request is still missing `seconds` after the watch began."""

    def __init__(self, seconds: float, on_late):
        self.seconds = seconds
        self._on_late = on_late
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-arrival", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, context: grpc.ServicerContext):
        key = next(self._ids)
        with self._lock:
            self._pending[key] = (time.monotonic() + self.seconds, context)
        try:
            yield
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _run(self) -> None:
        tick = min(0.25, self.seconds / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (due, _) in self._pending.items() if due <= now]
                contexts = [self._pending.pop(key)[1] for key in late]
            for context in contexts:
                self._on_late(context)
                context.cancel()  # the handler's wait ends; the client sees CANCELLED

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class WeightPublisher:
    """Serves weight versions to subscribers; `publish` is called by the learner. `report_bounds`
    says which actors the run has and how fast they can step (learner/progress_reports.py); without
    it, any actor id is taken, at a generous default speed."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_subscribers: int = 64,
        token: str | None = None,
        report_bounds: ReportBounds | None = None,
        request_arrival_s: float = REQUEST_ARRIVAL_S,
    ):
        self.max_message_bytes = max_message_bytes
        self.max_subscribers = max_subscribers
        self._streams = 0  # Subscribe streams open now
        # Calls turned away, by reason: unauthenticated, subscribers (over the cap), late (request
        # not arrived in time), report_malformed, report_unknown_actor, report_sessions, report_too_fast.
        self.refused = {"unauthenticated": 0, "subscribers": 0}
        self._refused_lock = threading.Lock()  # apart from _changed: the interceptor takes it
        self._log = _Throttled()
        self._changed = threading.Condition()
        self._payload: bytes | None = None
        self._start_payload: bytes | None = None
        self._version = -1
        self._stopped = False
        self._ledger = ProgressLedger(report_bounds)
        self._evaluator_seen = False  # an evaluator has subscribed in this run (or a checkpoint says so)
        self._evaluator_version = -1  # the newest version handed to an evaluator's stream
        self._arrivals = _ArrivalDeadlines(request_arrival_s, self._late)
        interceptors = [TokenInterceptor(token, self._unauthenticated)] if token else []
        # One worker thread per open stream, plus RESERVED_CALLS for reports and fetches.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_subscribers + RESERVED_CALLS, thread_name_prefix="weights"),
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                # Requests are tiny, so the receive window stays at HTTP/2's 64 KiB: with bandwidth
                # probing on, gRPC widens it to megabytes per stream and buffers that much of a
                # body it will refuse.
                ("grpc.http2.bdp_probe", 0),
            ],
            maximum_concurrent_rpcs=max_subscribers + RESERVED_CALLS,
            interceptors=interceptors,
        )
        # Request-streaming handlers, so that each reads its one request itself, under a deadline.
        handlers = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Subscribe": grpc.stream_stream_rpc_method_handler(self._subscribe),
                "FetchLatest": grpc.stream_unary_rpc_method_handler(self._fetch_latest),
                "FetchStart": grpc.stream_unary_rpc_method_handler(self._fetch_start),
                "Report": grpc.stream_unary_rpc_method_handler(self._report),
            },
        )
        self._server.add_generic_rpc_handlers((handlers,))
        self.port = self._server.add_insecure_port(f"{address}:{port}")
        if self.port == 0:
            self._arrivals.stop()
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

    # --- refusals ---------------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        with self._refused_lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def _unauthenticated(self, method: str, peer: str) -> None:
        self._count("unauthenticated")
        self._log.warning(
            "unauthenticated", "refused a call without the run's token: %s from %s", method, peer
        )

    def _late(self, context: grpc.ServicerContext) -> None:
        self._count("late")
        self._log.warning(
            "late",
            "cancelled a call from %s: its request had not arrived after %.0fs",
            context.peer(),
            self._arrivals.seconds,
        )

    def _request(self, requests, context: grpc.ServicerContext) -> bytes:
        """The call's one request message, waited for at most `request_arrival_s`."""
        with self._arrivals.watch(context):
            request = next(requests, None)  # a cancelled call raises RpcError: gRPC ends it quietly
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a call carries exactly one request message")
        return request

    # --- calls ------------------------------------------------------------------------------------

    def _subscribe(self, requests, context: grpc.ServicerContext):
        with self._changed:
            full = self._streams >= self.max_subscribers
            if not full:
                self._streams += 1
        if full:
            self._count("subscribers")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"already {self.max_subscribers} subscribers")
        try:
            sent = decode_version(self._request(requests, context))
            evaluator = dict(context.invocation_metadata()).get(ROLE_KEY) == EVALUATOR_ROLE
            if evaluator:
                with self._changed:
                    self._evaluator_seen = True
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

    def _fetch_latest(self, requests, context: grpc.ServicerContext) -> bytes:
        self._request(requests, context)
        payload = self._payload
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no weights published yet")
        return payload

    def _fetch_start(self, requests, context: grpc.ServicerContext) -> bytes:
        self._request(requests, context)
        payload = self._start_payload
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no starting weights published")
        return payload

    def _report(self, requests, context: grpc.ServicerContext) -> bytes:
        body = self._request(requests, context)
        try:
            report = parse_report(body)
        except BadReport as error:
            self._count("report_malformed")
            claimed = "" if error.actor is None else f"actor {error.actor} "
            self._log.warning(
                "report_malformed",
                "refused a malformed progress report from %s(%s): %s",
                claimed,
                context.peer(),
                error,
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed progress report: {error}")
        try:
            self._ledger.apply(report)
        except ReportRefused as error:
            self._count(f"report_{error.reason}")
            self._log.warning(
                f"report_{error.reason}",
                "refused a progress report from actor %d (%s): %s",
                error.actor,
                context.peer(),
                error,
            )
            context.abort(REFUSED_REPORT_CODES[error.reason], f"progress report refused: {error}")
        return b""

    # --- the run's clock --------------------------------------------------------------------------

    def sessions(self) -> list[list]:
        """[actor, session, env_steps, episodes, finished, heard_at] of every actor session, for a
        checkpoint (heard_at: when that actor's last report was accepted, wall-clock seconds)."""
        return self._ledger.rows()

    def restore_sessions(self, rows: list) -> None:
        """Totals saved by `sessions()` (a restarted learner continues the run's step count). A
        restored session counts as finished until it reports again: its actor may have died with the
        learner, and the run's end should not wait for it. An actor's speed bound counts from its
        saved heard_at, so what it played while the learner was down is accepted."""
        self._ledger.restore(rows)

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
        return self._ledger.totals()

    def all_actors_finished(self) -> bool:
        """Every actor session that ever reported has sent its final report."""
        return self._ledger.all_finished()

    def actors_reporting(self) -> set[int]:
        return self._ledger.actors()

    def stop(self, grace: float = 0.5) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._server.stop(grace).wait()
        self._arrivals.stop()
