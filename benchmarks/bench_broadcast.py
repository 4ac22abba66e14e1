"""Weight broadcast latency: publish the 3s5z agent network to 8 subscribers over gRPC on loopback.

Latency = receive time - publish time for each (version, subscriber). Results:
docs/bench/broadcast.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write  # noqa: E402

from actors.weight_client import WeightSubscriber  # noqa: E402
from common.envs.lite import LiteBatchEnv  # noqa: E402
from common.networks import agent_network as make_agent  # noqa: E402
from learner.weight_service import WeightPublisher  # noqa: E402

SUBSCRIBERS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 versions instead of 300")
    args = parser.parse_args(argv)
    versions = 50 if args.quick else 300
    env_info = LiteBatchEnv("3s5z", num_envs=1).get_env_info()
    state = make_agent(env_info).state_dict()
    publisher = WeightPublisher(port=0)
    subs = [WeightSubscriber(publisher.address).start() for _ in range(SUBSCRIBERS)]
    size = 0
    try:
        for version in range(1, versions + 1):
            size = publisher.publish(state, version)
            for sub in subs:
                if not sub.wait_for_version(version, timeout=10):
                    raise RuntimeError(f"subscriber missed version {version}")
            if version % 50 == 0:
                print(f"  published {version}/{versions}", flush=True)
        latencies = np.concatenate([np.array(sub.latencies_s) for sub in subs]) * 1000
    finally:
        for sub in subs:
            sub.stop()
        publisher.stop()
    p50, p99 = np.percentile(latencies, [50, 99])
    print(
        f"3s5z agent network ({size / 1024:.1f} KiB) to {SUBSCRIBERS} subscribers: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms over {latencies.size} deliveries"
    )
    md = "\n".join(
        [
            "# Weight broadcast latency",
            "",
            f"`python benchmarks/bench_broadcast.py{' --quick' if args.quick else ''}` — {machine()['cpu']}, "
            f"{machine()['cores']} cores, {machine()['date']}. The 3s5z agent network "
            f"({size / 1024:.1f} KiB encoded) published {versions} times over gRPC on loopback to "
            f"{SUBSCRIBERS} subscribers; latency is publish to receipt (decoded).",
            "",
            "| subscribers | deliveries | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            f"| {SUBSCRIBERS} | {latencies.size} | {p50:.2f} | {p99:.2f} | {latencies.max():.2f} |",
            "",
        ]
    )
    write(
        "broadcast",
        {
            "subscribers": SUBSCRIBERS,
            "message_bytes": size,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": float(latencies.max()),
            "deliveries": int(latencies.size),
        },
        md,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
