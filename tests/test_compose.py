"""docker-compose.yml, its GPU override, the Dockerfiles, the Prometheus configuration and the Ray
cluster file: valid for their real tools, and every command in them a real `ovmse` entry point.

No container engine runs here: Debian's docker-compose (1.29) validates compose files without one,
and promtool checks the Prometheus configuration; both are installed with apt-get when missing."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from common.config import resolve_config
from deploy.cli import COMMANDS, build_parser, env_overrides
from tests.deploy_support import (
    GPU_OVERRIDE,
    PROMETHEUS_CONFIG,
    ROOT,
    argv,
    default_services,
    environment,
    image_entrypoint,
    mounts,
    ovmse_invocations,
    project_services,
    require_tool,
    run_compose,
    services,
)

LONG_RUNNING = ("replay", "learner", "actor", "evaluator", "prometheus", "grafana")
CONFIG_MOUNT = "/etc/ovmse/ovmse.yaml"


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return require_tool("docker-compose")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


def resolved(*files: Path) -> dict:
    done = run_compose(*files)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


def service_config(name: str):
    """The configuration a compose service runs with: the mounted file plus its environment."""
    service = services()[name]
    host_file = ROOT / mounts(service)[CONFIG_MOUNT]
    return resolve_config(file=str(host_file), overrides=env_overrides(environment(service)))


def volume_of(service: dict, path: str) -> str | None:
    """The volume (or bind source) a path of the service's configuration lands in."""
    full = Path(service["working_dir"]) / path
    hits = [s for t, s in mounts(service).items() if full == Path(t) or Path(t) in full.parents]
    return hits[0] if hits else None


# --- the compose file ----------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose(docker_compose):
    done = run_compose(args=("config", "--quiet"))
    assert done.returncode == 0, done.stderr
    config = resolved()
    assert set(config["services"]) == set(services())


def test_plain_up_starts_the_complete_lite_run():
    assert set(default_services()) == {"dataset", *LONG_RUNNING}
    assert services()["demo"]["profiles"] == ["demo"]  # the scripted demo only on request
    for name in ("replay", "learner", "actor", "evaluator"):
        assert service_config(name).env.backend == "lite"


def test_every_service_command_is_an_ovmse_entry_point():
    parser = build_parser()
    assert image_entrypoint() == ["ovmse"]
    for name, service in project_services().items():
        invocations = ovmse_invocations(service)
        assert invocations, f"{name}: {argv(service)} runs no ovmse command"
        for args in invocations:
            subcommand = " ".join(args[:2]) if args[0] == "dataset" else args[0]
            assert subcommand in COMMANDS, f"{name}: `ovmse {subcommand}` is not a command"
            parsed = parser.parse_args(args)  # exits (SystemExit) on an unknown option
            assert parsed.command == subcommand
    roles = {name: ovmse_invocations(s)[0][0] for name, s in project_services().items()}
    assert roles["replay"] == "replay-server" and roles["learner"] == "learner"
    assert roles["actor"] == "actor" and roles["evaluator"] == "evaluate"
    # Replicas of `actor` must differ: no fixed --actor-id and no OVMSE_ACTOR_ID.
    actor = services()["actor"]
    assert "--actor-id" not in argv(actor) and "OVMSE_ACTOR_ID" not in environment(actor)


def test_the_dataset_service_collects_exactly_the_file_replay_loads():
    script = " ".join(argv(services()["dataset"])[2:])
    (collect,) = ovmse_invocations(services()["dataset"])
    out = collect[collect.index("--out") + 1]
    assert f"test -f {out} ||" in script  # only when the file is missing
    assert service_config("replay").run.dataset == out
    assert services()["replay"]["depends_on"]["dataset"]["condition"] == "service_completed_successfully"


def test_services_read_one_mounted_config_file_and_environment_overrides():
    for name, service in project_services().items():
        source = mounts(service).get(CONFIG_MOUNT)
        assert source and (ROOT / source).is_file(), f"{name} does not mount the config file"
        assert any(v.endswith(f"{CONFIG_MOUNT}:ro") for v in service["volumes"])
        assert all(CONFIG_MOUNT in args for args in ovmse_invocations(service) if args[0] != "demo")
    for name in ("replay", "learner", "actor", "evaluator"):
        cfg = service_config(name)
        assert cfg.replay.address == "replay" and cfg.actor.weight_server.startswith("learner:")
        assert cfg.run.bind_address == "0.0.0.0" and cfg.run.metrics_port > 0
    assert service_config("evaluator").actor.final_test_episodes == 640  # as the paper reports


def test_volumes_hold_datasets_runs_and_replay_checkpoints():
    declared = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"])
    assert {"datasets", "runs", "reverb", "prometheus", "grafana"} <= declared
    for name in ("replay", "learner", "actor", "evaluator", "dataset"):
        service = services()[name]
        cfg = service_config(name)
        assert volume_of(service, cfg.run.dataset) == "datasets", name
        if name in ("learner", "evaluator"):
            assert volume_of(service, cfg.run.run_dir) == "runs", name  # checkpoints, metrics, plots
        if name == "replay":
            assert volume_of(service, cfg.replay.checkpoint_dir) == "reverb"


def test_health_checks_restart_policies_and_start_order():
    for name in LONG_RUNNING:
        service = services()[name]
        assert service["restart"] in ("on-failure", "unless-stopped", "always"), name
        check = service["healthcheck"]
        assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert services()["dataset"]["restart"] == "no"
    for name in ("replay", "learner", "actor", "evaluator"):
        check = services()[name]["healthcheck"]["test"]
        assert check[1:4] == ["python", "-m", "deploy.healthcheck"]
        port = int(check[check.index("--metrics") + 1])
        assert port == service_config(name).run.metrics_port, name
    depends = {name: services()[name].get("depends_on", {}) for name in LONG_RUNNING}
    assert depends["learner"]["replay"]["condition"] == "service_healthy"
    assert depends["actor"]["learner"]["condition"] == "service_healthy"
    assert depends["evaluator"]["learner"]["condition"] == "service_healthy"


def test_health_check_command_works(tmp_path):
    from common.metrics import Metrics
    from deploy.healthcheck import main

    metrics = Metrics("test")
    port = metrics.serve(0, "127.0.0.1")
    try:
        assert main(["--metrics", str(port), "--tcp", str(port)]) == 0
    finally:
        metrics.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert main(["--metrics", str(closed), "--timeout", "1"]) == 1
    assert main(["--tcp", str(closed), "--timeout", "1"]) == 1


def test_gpu_override_gives_the_learner_one_gpu(docker_compose):
    config = resolved(ROOT / "docker-compose.yml", GPU_OVERRIDE)
    learner = config["services"]["learner"]
    (device,) = learner["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert learner["environment"]["OVMSE__learner__device"] == "cuda"
    assert learner["command"][0] == "learner" and "OVMSE__replay__address" in learner["environment"]
    others = [s for n, s in config["services"].items() if n != "learner"]
    assert all("deploy" not in s for s in others)
    # Without the override the learner runs on the CPU when there is no GPU ("auto").
    assert service_config("learner").learner.device == "auto"


# --- images ----------------------------------------------------------------------------------------


def test_project_image_is_python_311_pinned_and_unprivileged():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11" in text
    assert "-c constraints.txt" in text
    assert "\nUSER ovmse" in text and 'ENTRYPOINT ["ovmse"]' in text


def test_sc2_image_installs_the_game_maps_and_smac_behind_the_eula():
    text = (ROOT / "deploy" / "Dockerfile.sc2").read_text()
    assert "ARG ACCEPT_SC2_EULA=no" in text and '"$ACCEPT_SC2_EULA" != "yes"' in text
    assert "SC2_VERSION=4.10" in text and "iagreetotheeula" in text
    assert "SMAC_Maps" in text and "github.com/oxwhirl/smac" in text
    assert "SMAC_REF=" in text and "ENV SC2PATH=" in text
    # The eula check runs before anything is downloaded.
    assert text.index('ACCEPT_SC2_EULA" != "yes"') < text.index("wget")


# --- Prometheus and Ray ----------------------------------------------------------------------------


def test_prometheus_configuration_is_valid_and_scrapes_every_role(promtool):
    check = [promtool, "check", "config", str(PROMETHEUS_CONFIG)]
    done = subprocess.run(check, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for role in ("replay", "learner", "actor", "evaluator"):
        (sd,) = jobs[role]["dns_sd_configs"]
        assert sd["names"] == [role] and sd["type"] == "A"  # all replicas of a scaled service
        assert sd["port"] == service_config(role).run.metrics_port
    mounted = mounts(services()["prometheus"])
    assert (ROOT / mounted["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_CONFIG


def test_ray_cluster_file_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "deploy" / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("ovmse_replay") == 1
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())  # the learner's node
    assert any(t["resources"].get("CPU", 0) >= 8 and "GPU" not in t["resources"] for t in types.values())
    assert "--entrypoint=" in config["docker"]["run_options"]  # the image's entry point is ovmse
