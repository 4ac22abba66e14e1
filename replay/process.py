"""The replay-server process: serve the tables, export their sizes and rates, checkpoint."""

from __future__ import annotations

import threading
import time

from common.config.sections import Config
from common.metrics import Metrics
from replay.server import ReplayServer

STATS_INTERVAL_S = 1.0


def export_table_stats(server: ReplayServer, metrics: Metrics, last: dict) -> None:
    """Copy the tables' sizes and insert/sample counts into the Prometheus metrics."""
    for name, stats in server.stats().items():
        metrics.replay_items.labels(table=name).set(stats.size)
        inserts, samples = last.get(name, (0, 0))
        metrics.replay_inserts.labels(table=name).inc(max(0, stats.inserts - inserts))
        metrics.replay_samples.labels(table=name).inc(max(0, stats.samples - samples))
        last[name] = (stats.inserts, stats.samples)


def serve_replay(cfg: Config, stop: threading.Event, server: ReplayServer, metrics: Metrics) -> None:
    """Run the replay server for `cfg` until `stop` is set: checkpoints every
    replay.checkpoint_interval_s and at the end (when replay.checkpoint_dir is set), table sizes into
    `metrics` (served on run.metrics_port when that is set)."""
    last: dict = {}
    next_checkpoint = time.monotonic() + cfg.replay.checkpoint_interval_s
    try:
        while not stop.wait(STATS_INTERVAL_S):
            export_table_stats(server, metrics, last)
            if server.checkpoints_enabled and time.monotonic() >= next_checkpoint:
                server.checkpoint()
                next_checkpoint = time.monotonic() + cfg.replay.checkpoint_interval_s
    finally:
        server.stop(checkpoint=True)
        metrics.close()
