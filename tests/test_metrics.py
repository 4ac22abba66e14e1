"""Every process exports its metrics under DESIGN.md's names over HTTP."""

from __future__ import annotations

import urllib.request

from common.metrics import METRIC_NAMES, Metrics


def test_metrics_are_served_with_the_agreed_names():
    metrics = Metrics("actor")
    port = metrics.serve(0)
    try:
        metrics.env_steps.labels(actor="0").inc(16)
        metrics.broadcast_seconds.observe(0.003)
        metrics.replay_items.labels(table="online").set(5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert 'ovmse_env_steps_total{actor="0"} 16.0' in text
    assert "ovmse_weight_broadcast_seconds_bucket" in text
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
