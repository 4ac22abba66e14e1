"""Helpers of the deployment tests: the Debian tools they need (installed on first use), and the
compose file read the way the tests use it (services, their argv, environment and mounts)."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ovmse.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Debian packages that provide the tools: docker-compose 1.29 validates a compose file without a
# container engine; prometheus brings the server and promtool.
APT_PACKAGES = {"docker-compose": "docker-compose", "prometheus": "prometheus", "promtool": "prometheus"}


@functools.cache
def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            pytest.fail(f"{' '.join(command)} failed: {tail}")


def require_tool(name: str) -> str:
    """The path of a Debian tool, installed with apt-get first if it is missing. Skips (with the
    reason) only where apt-get cannot be used at all."""
    path = shutil.which(name)
    if path:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip(f"{name} is not installed and apt-get is unavailable (not a Debian/Ubuntu system)")
    if os.geteuid() != 0:
        pytest.skip(f"{name} is not installed and installing it with apt-get needs root")
    _apt_install(APT_PACKAGES[name])
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"apt-get install {APT_PACKAGES[name]} did not provide {name}")
    return path


# --- the compose file ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value, environ=None):
    """Compose's `${VAR}` / `${VAR:-default}` substitution, through a parsed YAML value."""
    environ = os.environ if environ is None else environ
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    return value


@functools.cache
def compose() -> dict:
    """docker-compose.yml, YAML anchors merged and variables substituted with their defaults."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), {})


def services() -> dict[str, dict]:
    return compose()["services"]


def project_services() -> dict[str, dict]:
    """The services built from this repository (the others run third-party images)."""
    return {name: s for name, s in services().items() if "build" in s}


def default_services() -> dict[str, dict]:
    """What a plain `docker compose up` starts: services without a profile."""
    return {name: s for name, s in services().items() if not s.get("profiles")}


@functools.cache
def image_entrypoint() -> list[str]:
    """ENTRYPOINT of deploy/Dockerfile (exec form)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return yaml.safe_load(line.split(None, 1)[1])
    raise AssertionError("deploy/Dockerfile has no ENTRYPOINT")


def argv(service: dict) -> list[str]:
    """The container's argv: the service's entrypoint (else the image's) plus its command."""
    entrypoint = service.get("entrypoint", image_entrypoint())
    command = service.get("command", [])
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return entrypoint + command


def ovmse_invocations(service: dict) -> list[list[str]]:
    """Every `ovmse ...` command line a service runs (its argument lists, without `ovmse`): the
    argv itself, or the `ovmse` commands of a `sh -c` script."""
    args = argv(service)
    if args[0] == "ovmse":
        return [args[1:]]
    if args[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        out = []
        for part in re.split(r"\|\||&&|;", " ".join(args[2:])):
            words = shlex.split(part)
            if words[:1] == ["exec"]:
                words = words[1:]
            if words[:1] == ["ovmse"]:
                out.append(words[1:])
        return out
    return []


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict) -> dict[str, str]:
    """{container path: source} of a service's volumes (short syntax); a named volume's source is
    its name, a bind mount's a path relative to the repository."""
    out = {}
    for item in service.get("volumes", []):
        source, target = item.split(":")[:2]
        out[target] = source
    return out


def run_compose(*files: Path, args: tuple[str, ...] = ("config",)) -> subprocess.CompletedProcess:
    tool = require_tool("docker-compose")
    command = [tool]
    for f in files:
        command += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVMSE", "COMPOSE_", "DOCKER_"))}
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# --- the dashboard -----------------------------------------------------------------------------

_METRIC = re.compile(r"ovmse_[a-z_]+")
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return exprs


def metric_family(series: str) -> str:
    """ovmse_weight_broadcast_seconds_bucket -> ovmse_weight_broadcast_seconds."""
    for suffix in _SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def queried_metrics(exprs) -> set[str]:
    """The metric families a list of PromQL expressions reads (a crude but sufficient parse)."""
    return {metric_family(m) for expr in exprs for m in _METRIC.findall(expr)}


def concrete(expr: str, rate_window: str = "1m") -> str:
    """A dashboard query with Grafana's variables replaced, for Prometheus itself."""
    return expr.replace("$__rate_interval", rate_window).replace("$__interval", rate_window)
