"""Deployment: embedded orchestration, Dockerfiles, Prometheus/Grafana provisioning, the Ray launcher."""
