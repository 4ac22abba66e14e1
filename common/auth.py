"""The shared token that the learner's gRPC service (weights, progress reports) asks of its clients.

Where the token comes from, first found wins:
1. the environment variable OVMSE_TOKEN (what `ovmse run` and `ovmse ray-launch` hand their
   processes: they generate one per run);
2. the file named by `run.auth_token_file` (what docker compose uses: a volume shared by the
   learner, actors and evaluator). When the file does not exist, the first process that needs it
   creates it with a random token, readable by its owner only.
With neither, there is no token and the service accepts any client that can reach its address
(which is 127.0.0.1 unless `run.bind_address` says otherwise).

Clients send `authorization: Bearer <token>` metadata; the server compares in constant time and
refuses anything else with UNAUTHENTICATED. The check is a server interceptor (`TokenInterceptor`):
it reads only the call's headers, and a call without the token ends there, before its request body
is asked for and without waiting for it, so such calls cannot hold the service's concurrent-call
slots or make it buffer their bodies. The token itself is never logged and never written into a
run's config.yaml (the config holds only the file's path).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

TOKEN_ENV = "OVMSE_TOKEN"
METADATA_KEY = "authorization"
SCHEME = "Bearer "


def new_token() -> str:
    return secrets.token_urlsafe(32)


def resolve_token(token_file: str | None = None, environ=None) -> str | None:
    """The configured token (see the module doc), creating `token_file` if it is named but missing."""
    environ = os.environ if environ is None else environ
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if not token_file:
        return None
    return read_or_create_token_file(Path(token_file))


def read_or_create_token_file(path: Path) -> str:
    """The token in `path`; if there is no such file, a new random one, written atomically with
    mode 0600 (when several processes race, exactly one file wins and all read it)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new_token() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # fails if another process made it first: theirs wins
        finally:
            os.unlink(tmp)
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return token


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """gRPC call metadata carrying `token` (None: no metadata)."""
    return ((METADATA_KEY, SCHEME + token),) if token else None


def authorized(metadata, token: str | None) -> bool:
    """Whether a call's metadata carries `token` (always True when no token is configured)."""
    if not token:
        return True
    for key, value in metadata or ():
        if key == METADATA_KEY and isinstance(value, str) and value.startswith(SCHEME):
            return hmac.compare_digest(value[len(SCHEME) :].encode(), token.encode())
    return False


class TokenInterceptor(grpc.ServerInterceptor):
    """Lets through only calls whose metadata carries `token`; every other call is answered
    UNAUTHENTICATED at once. `on_refused(method, peer)` is called for each refused call.

    gRPC Python runs interceptors when a call's headers arrive. Its unary handlers first wait for
    the request message (holding a concurrent-call slot and a worker thread until it arrives, and
    buffering it whole); the refusal is therefore a request-streaming handler that never reads its
    request iterator: it aborts as soon as a worker takes it, and the body is never received beyond
    HTTP/2's flow-control window."""

    def __init__(self, token: str, on_refused: Callable[[str, str], None] | None = None):
        if not token:
            raise ValueError("TokenInterceptor needs a token")
        self._token = token
        self._on_refused = on_refused

    def intercept_service(self, continuation, handler_call_details):
        if authorized(handler_call_details.invocation_metadata, self._token):
            return continuation(handler_call_details)
        method = handler_call_details.method

        def refuse(_requests, context: grpc.ServicerContext):
            if self._on_refused is not None:
                self._on_refused(method, context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "this service needs the run's token")

        return grpc.stream_unary_rpc_method_handler(refuse)
