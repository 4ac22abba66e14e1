"""The replay-server process: serve the tables, export their sizes and rates, checkpoint.

With checkpoints on, it also keeps a ledger (LEDGER in the checkpoint directory, rewritten every
second): how many online episodes the table has taken in all. A server restarted from a checkpoint
compares its restored count with the ledger's last one and says how many online episodes, inserted
after that checkpoint, were lost (at most replay.checkpoint_interval_s worth), adding them to the
ledger's running total of lost episodes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from common.config.sections import Config
from common.metrics import Metrics
from replay.server import ReplayServer

STATS_INTERVAL_S = 1.0
LEDGER = "ledger.json"


def read_ledger(checkpoint_dir: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(checkpoint_dir) / LEDGER).read_text())
    except (OSError, ValueError):
        return {}


def write_ledger(checkpoint_dir: str | os.PathLike, **fields) -> None:
    path = Path(checkpoint_dir) / LEDGER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, path)


def online_inserts(server: ReplayServer) -> int:
    from replay.tables import ONLINE_TABLE

    return server.stats()[ONLINE_TABLE].inserts  # restored with the table from a checkpoint


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
    ledger = server.checkpoint_dir if server.checkpoints_enabled else None
    lost = 0
    if ledger is not None:
        before = read_ledger(ledger)
        lost = int(before.get("lost_online_episodes", 0))
        if server.restored and "online_inserts" in before:
            kept = online_inserts(server)
            now_lost = max(0, int(before["online_inserts"]) - kept)
            lost += now_lost
            print(
                f"replay: restored from the last checkpoint, which had taken {kept} online episodes; "
                f"{now_lost} inserted after it were lost ({lost} in all over this run's restarts)",
                flush=True,
            )
    try:
        while not stop.wait(STATS_INTERVAL_S):
            export_table_stats(server, metrics, last)
            if ledger is not None:
                write_ledger(ledger, online_inserts=online_inserts(server), lost_online_episodes=lost)
            if server.checkpoints_enabled and time.monotonic() >= next_checkpoint:
                server.checkpoint()
                next_checkpoint = time.monotonic() + cfg.replay.checkpoint_interval_s
    finally:
        server.stop(checkpoint=True)
        metrics.close()
