"""Prometheus metrics of every process, named as DESIGN.md says (prefix `ovmse_`, base units,
`_total` counters, histograms for latencies).

Each process makes one `Metrics` (its own registry, so tests can run several in one interpreter),
updates the metrics that concern it, and serves them on /metrics when given a port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self, role: str):
        self.role = role
        r = self.registry = CollectorRegistry()
        # Counters are declared without `_total`; prometheus_client appends it on export.
        self.env_steps = Counter("ovmse_env_steps", "Environment steps played", ["actor"], registry=r)
        self.episodes = Counter("ovmse_episodes", "Episodes completed", ["actor"], registry=r)
        self.train_win_rate = Gauge(
            "ovmse_train_win_rate", "Win rate of recent training episodes", registry=r
        )
        self.train_return = Gauge("ovmse_train_return", "Mean return of recent training episodes", registry=r)
        self.test_win_rate = Gauge(
            "ovmse_test_win_rate", "Win rate of the last greedy evaluation", registry=r
        )
        self.test_return = Gauge("ovmse_test_return", "Mean return of the last greedy evaluation", registry=r)
        self.replay_items = Gauge(
            "ovmse_replay_items", "Episodes held per replay table", ["table"], registry=r
        )
        self.replay_inserts = Counter("ovmse_replay_inserts", "Episodes inserted", ["table"], registry=r)
        self.replay_samples = Counter("ovmse_replay_samples", "Episodes sampled", ["table"], registry=r)
        self.learner_updates = Counter("ovmse_learner_updates", "Gradient steps", registry=r)
        self.learner_loss = Gauge("ovmse_learner_loss", "Loss parts of the last update", ["part"], registry=r)
        self.q_tot_mean = Gauge("ovmse_q_tot_mean", "Mean Q_tot over the last batch", registry=r)
        self.ovm_active_fraction = Gauge(
            "ovmse_ovm_active_fraction",
            "Share of samples where the offline memory beats the TD target",
            registry=r,
        )
        self.memory_coefficient = Gauge(
            "ovmse_memory_coefficient", "OVM memory coefficient lambda", registry=r
        )
        self.epsilon = Gauge("ovmse_epsilon", "Exploration rate", ["actor"], registry=r)
        self.policy_version = Gauge("ovmse_policy_version", "Newest weight version", ["role"], registry=r)
        self.policy_lag = Gauge(
            "ovmse_policy_lag_versions",
            "Versions between the learner's newest and the one that played",
            ["actor"],
            registry=r,
        )
        self.broadcast_seconds = Histogram(
            "ovmse_weight_broadcast_seconds",
            "Publish-to-receipt latency",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_wait_seconds = Histogram(
            "ovmse_learner_batch_wait_seconds",
            "Time the learner waited for a batch",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        # Bad data and bad numbers, kept out of training (docs/reliability.md).
        self.replay_items_dropped = Counter(
            "ovmse_replay_items_dropped",
            "Replay items dropped and deleted from their table, never trained on: reason = decode | "
            "shape | nonfinite | invalid | out_of_range | inconsistent | non_finite_loss",
            ["table", "reason"],
            registry=r,
        )
        self.learner_updates_skipped = Counter(
            "ovmse_learner_updates_skipped",
            "Updates skipped because their loss or gradient was not finite",
            registry=r,
        )
        self.nonfinite_weights_refused = Counter(
            "ovmse_nonfinite_weights_refused",
            "Weights not published or checkpointed because they held NaN or infinity",
            ["what"],
            registry=r,
        )
        self._server = None

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve /metrics on `address:port` (0 = a free port); returns the port."""
        self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


METRIC_NAMES = (
    "ovmse_env_steps_total",
    "ovmse_episodes_total",
    "ovmse_train_win_rate",
    "ovmse_train_return",
    "ovmse_test_win_rate",
    "ovmse_test_return",
    "ovmse_replay_items",
    "ovmse_replay_inserts_total",
    "ovmse_replay_samples_total",
    "ovmse_learner_updates_total",
    "ovmse_learner_loss",
    "ovmse_q_tot_mean",
    "ovmse_ovm_active_fraction",
    "ovmse_memory_coefficient",
    "ovmse_epsilon",
    "ovmse_policy_version",
    "ovmse_policy_lag_versions",
    "ovmse_weight_broadcast_seconds",
    "ovmse_learner_batch_wait_seconds",
    "ovmse_replay_items_dropped_total",
    "ovmse_learner_updates_skipped_total",
    "ovmse_nonfinite_weights_refused_total",
)
