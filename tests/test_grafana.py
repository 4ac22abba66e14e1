"""The Grafana dashboard and its provisioning: every query reads metrics the code exports (by name,
common/metrics.py METRIC_NAMES), the issue's panels are all there, every query parses as PromQL
(promtool), and the data source and dashboard paths match docker-compose.yml."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from common.metrics import METRIC_NAMES
from tests.deploy_support import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    ROOT,
    concrete,
    dashboard_queries,
    mounts,
    queried_metrics,
    require_tool,
    services,
)

# What the issue asks the dashboard to show, as the metrics that show it.
REQUIRED = {
    "ovmse_env_steps_total",  # env steps/s per actor and in total
    "ovmse_episodes_total",  # episodes/s
    "ovmse_train_win_rate",
    "ovmse_test_win_rate",
    "ovmse_train_return",
    "ovmse_test_return",
    "ovmse_replay_items",  # replay table sizes
    "ovmse_replay_inserts_total",
    "ovmse_replay_samples_total",
    "ovmse_learner_updates_total",  # updates/s
    "ovmse_learner_loss",
    "ovmse_q_tot_mean",
    "ovmse_ovm_active_fraction",
    "ovmse_memory_coefficient",
    "ovmse_epsilon",
    "ovmse_policy_lag_versions",
    "ovmse_weight_broadcast_seconds",  # broadcast latency
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_queried_metric_is_one_the_code_exports(dashboard):
    queried = queried_metrics(dashboard_queries(dashboard))
    assert queried, "the dashboard has no queries"
    assert queried <= set(METRIC_NAMES), f"not exported: {sorted(queried - set(METRIC_NAMES))}"


def test_the_dashboard_shows_what_the_issue_asks_for(dashboard):
    queries = dashboard_queries(dashboard)
    assert REQUIRED <= queried_metrics(queries)
    # Rates per actor and in total; latency as quantiles of the histogram.
    assert any("sum by (actor) (rate(ovmse_env_steps_total" in q for q in queries)
    assert any(re.fullmatch(r"sum\(rate\(ovmse_env_steps_total\[[^]]+\]\)\)", q) for q in queries)
    assert any("histogram_quantile" in q and "ovmse_weight_broadcast_seconds_bucket" in q for q in queries)


def test_queries_select_jobs_that_prometheus_scrapes(dashboard):
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    selected = {m for q in dashboard_queries(dashboard) for m in re.findall(r'job="([^"]+)"', q)}
    assert selected and selected <= jobs


def test_every_query_is_valid_promql(dashboard, tmp_path):
    promtool = require_tool("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": concrete(q)}
                    for i, q in enumerate(dashboard_queries(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_panels_use_the_provisioned_data_source(dashboard):
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"

    def walk(panels):
        for panel in panels:
            if panel.get("type") != "row":
                yield panel
            yield from walk(panel.get("panels", []))

    panels = list(walk(dashboard["panels"]))
    assert len(panels) >= 15
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_mounts_the_provisioning_where_grafana_looks():
    grafana = mounts(services()["grafana"])
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert (ROOT / grafana["/etc/grafana/provisioning"]).resolve() == provisioning
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "ovmse.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    assert (ROOT / grafana[folder]).resolve() == DASHBOARD.parent
