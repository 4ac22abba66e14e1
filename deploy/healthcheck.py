"""Container health checks: `python -m deploy.healthcheck [--metrics PORT] [--tcp PORT] ...`.

Healthy (exit 0) when every check passes: `--metrics PORT` fetches http://HOST:PORT/metrics and
finds `ovmse_` metrics in it; `--tcp PORT` opens a TCP connection (the Reverb and weight-service
ports speak gRPC, so a connection is as far as a stdlib check can go). Exit 1 names the first
check that failed. Standard library only, so that a check every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request
from collections.abc import Sequence


def check_metrics(host: str, port: int, timeout_s: float) -> None:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
        body = response.read().decode("utf-8", "replace")
    if "ovmse_" not in body:
        raise RuntimeError(f"http://{host}:{port}/metrics has no ovmse_ metrics")


def check_tcp(host: str, port: int, timeout_s: float) -> None:
    with socket.create_connection((host, port), timeout=timeout_s):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="where to check (default: 127.0.0.1)")
    parser.add_argument("--metrics", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S")
    args = parser.parse_args(argv)
    if not args.metrics and not args.tcp:
        parser.error("nothing to check: give --metrics PORT and/or --tcp PORT")
    checks = [(f"metrics :{p}", check_metrics, p) for p in args.metrics]
    checks += [(f"tcp :{p}", check_tcp, p) for p in args.tcp]
    for name, check, port in checks:
        try:
            check(args.host, port, args.timeout)
        except Exception as error:  # any failure means unhealthy; say which check and why
            print(f"unhealthy: {name}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
