"""Small network helpers every process shares: free ports and gRPC message-size options."""

from __future__ import annotations

import socket


def pick_free_port(host: str = "") -> int:
    """A port nothing listens on right now (the OS's choice for port 0; all interfaces by default,
    as Reverb listens on all of them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel and server options that bound every message both ways."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


# gRPC's own reconnect backoff grows to 120 s by default; a client waiting (wait_for_ready) for a
# restarted server could then miss a short life of it entirely (a restarted learner that plays out
# the last steps of a run). Capped at 2 s, a client reaches a restarted server within ~2 s.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def client_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options for a client channel: bounded messages and a short reconnect backoff."""
    return grpc_options(max_message_bytes) + RECONNECT_OPTIONS
