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
