"""Who may talk to the run's services: the learner's weight service asks for the run's token when one
is configured and refuses everyone else (no weights, no progress report counted) from the call's
headers alone, so calls without it hold no slot and are never read; idle Subscribe streams and
requests that never arrive cannot starve the actors' reports; the token never reaches a log or a
config file; services listen on 127.0.0.1 unless told otherwise; compose publishes nothing beyond
this host and Grafana has no default password."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import grpc
import pytest
import torch
import yaml

from actors.weight_client import ProgressReporter, WeightSubscriber, fetch_latest
from common.auth import TOKEN_ENV, call_metadata, resolve_token
from common.config import format_config, resolve_config
from common.weight_protocol import REPORT, SUBSCRIBE, encode_version
from learner.weight_service import WeightPublisher
from tests.deploy_support import ROOT, services

TOKEN = "s3cret-token-for-tests-0123456789"
WEIGHTS = {"layer.weight": torch.ones(2, 2)}


@pytest.fixture
def guarded():
    publisher = WeightPublisher(port=0, token=TOKEN)
    publisher.publish(WEIGHTS, 1)
    yield publisher
    publisher.stop()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


# --- the token ------------------------------------------------------------------------------------


def test_clients_without_the_token_get_no_weights(guarded):
    assert code_of(lambda: fetch_latest(guarded.address, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = "x" * len(TOKEN)
    assert code_of(lambda: fetch_latest(guarded.address, timeout=5, token=wrong)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert fetch_latest(guarded.address, timeout=5, token=TOKEN).version == 1
    assert guarded.refused["unauthenticated"] == 2


def test_a_forged_progress_report_cannot_move_the_run_clock(guarded):
    forger = ProgressReporter(guarded.address, actor_id=0)
    assert forger.report(env_steps=10**9, episodes=1, final=True) is False
    assert guarded.totals() == (0, 0) and not guarded.all_actors_finished()
    actor = ProgressReporter(guarded.address, actor_id=0, token=TOKEN)
    assert actor.report(env_steps=120, episodes=3) is True
    assert guarded.totals() == (120, 3)
    forger.close()
    actor.close()


def test_a_subscriber_without_the_token_is_refused_and_the_token_is_never_logged(guarded, caplog):
    with caplog.at_level(logging.INFO):
        intruder = WeightSubscriber(
            guarded.address, min_backoff_s=0.05, max_backoff_s=0.1, token="wrong"
        ).start()
        member = WeightSubscriber(guarded.address, token=TOKEN).start()
        try:
            assert member.wait_for_version(1, timeout=10)
            deadline = time.monotonic() + 10
            while intruder.refused < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            intruder.stop()
            member.stop()
    assert intruder.refused >= 2 and intruder.version == -1 and intruder.take() is None
    assert "refused this client: missing or wrong token" in caplog.text
    assert TOKEN not in caplog.text and "wrong" not in caplog.text.replace("missing or wrong token", "")


def test_without_a_configured_token_the_service_is_open_as_before():
    publisher = WeightPublisher(port=0)
    try:
        publisher.publish(WEIGHTS, 3)
        assert fetch_latest(publisher.address, timeout=5).version == 3
        assert fetch_latest(publisher.address, timeout=5, token="anything").version == 3
    finally:
        publisher.stop()


def test_the_token_comes_from_the_environment_or_a_file_made_once(tmp_path):
    assert resolve_token(None, environ={}) is None
    assert resolve_token(str(tmp_path / "unused"), environ={TOKEN_ENV: "from-env"}) == "from-env"
    path = tmp_path / "secrets" / "token"
    tokens = []
    threads = [
        threading.Thread(target=lambda: tokens.append(resolve_token(str(path), environ={}))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and len(tokens[0]) >= 32  # racing processes agree on one token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary files left
    assert resolve_token(str(path), environ={}) == tokens[0]


def test_the_token_never_appears_in_the_written_config(tmp_path, monkeypatch, capsys):
    from deploy import cli

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    token_file = tmp_path / "token"
    cfg = resolve_config(map_name="3m", overrides=[f"run.auth_token_file={token_file}"])
    text = format_config(cfg)
    assert TOKEN not in text and f"auth_token_file: {token_file}" in text
    token_file.write_text("file-token-abcdefghijklmnopqrstuvwxyz\n")
    assert cli.main(["config", "--map", "3m", "--set", f"run.auth_token_file={token_file}"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out and "file-token" not in out


def test_the_launchers_hand_every_process_a_token(monkeypatch):
    from deploy.ray_launch import RayLaunch

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = resolve_config(map_name="3m")
    first, second = RayLaunch(cfg).token, RayLaunch(cfg).token
    assert first and second and first != second  # a new one per launch
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert RayLaunch(cfg).token == TOKEN  # or the one the user gave
    embedded = (ROOT / "deploy" / "embedded.py").read_text()
    assert "env[TOKEN_ENV] = env.get(TOKEN_ENV) or new_token()" in embedded


# --- idle streams ---------------------------------------------------------------------------------


def test_idle_subscribe_streams_cannot_starve_progress_reports():
    publisher = WeightPublisher(port=0, max_subscribers=4, token=TOKEN)
    publisher.publish(WEIGHTS, 1)
    channel = grpc.insecure_channel(publisher.address)
    subscribe = channel.unary_stream(SUBSCRIBE)
    idle = []
    try:
        # Streams nobody reads from: each holds a server thread until it is cancelled.
        for _ in range(4 + 20):
            idle.append(subscribe(encode_version(5), metadata=call_metadata(TOKEN)))
        deadline = time.monotonic() + 10
        while publisher.open_streams + publisher.refused["subscribers"] < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.open_streams == 4 and publisher.refused["subscribers"] == 20
        reporters = [ProgressReporter(publisher.address, i, timeout_s=2.0, token=TOKEN) for i in range(8)]
        began = time.monotonic()
        assert all(r.report(env_steps=100, episodes=1) for r in reporters)
        assert publisher.totals() == (800, 8) and time.monotonic() - began < 5
        for r in reporters:
            r.close()
    finally:
        for call in idle:
            call.cancel()
        channel.close()
    deadline = time.monotonic() + 10
    while publisher.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert publisher.open_streams == 0  # cancelled streams give their slots back
    member = WeightSubscriber(publisher.address, token=TOKEN).start()
    try:
        assert member.wait_for_version(1, timeout=10)
    finally:
        member.stop()
        publisher.stop()


# --- calls that never send their request ----------------------------------------------------------


@contextlib.contextmanager
def silent_calls(address: str, method: str, count: int, token: str | None = None):
    """`count` calls that send their headers and never their request: each call's request iterator
    blocks until the block ends (what a client that opens calls and stays silent does)."""
    release = threading.Event()

    def nothing():
        release.wait()
        yield from ()

    channel = grpc.insecure_channel(address)
    calls = [
        channel.stream_unary(method).future(nothing(), metadata=call_metadata(token)) for _ in range(count)
    ]
    try:
        yield calls
    finally:
        release.set()
        for call in calls:
            call.cancel()
        channel.close()


def test_silent_calls_without_the_token_end_at_once_and_hold_no_slot(caplog):
    publisher = WeightPublisher(port=0, max_subscribers=4, token=TOKEN)  # 4 + 16 concurrent calls
    try:
        with (
            caplog.at_level(logging.WARNING, logger="learner.weight_service"),
            silent_calls(publisher.address, REPORT, 40) as calls,  # twice the service's slots
        ):
            began = time.monotonic()
            for call in calls:  # answered without their request
                assert call.exception(timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - began < 5
            actor = ProgressReporter(publisher.address, 0, timeout_s=2.0, token=TOKEN)
            began = time.monotonic()
            assert actor.report(env_steps=100, episodes=1)
            assert time.monotonic() - began < 2 and publisher.totals() == (100, 1)
            actor.close()
        assert publisher.refused["unauthenticated"] == 40
        assert "refused a call without the run's token: /ovmse.WeightService/Report from ipv4:127.0.0.1:" in (
            caplog.text
        )
        assert len(caplog.records) < 10  # at most one line per LOG_EVERY_S, not one per call
    finally:
        publisher.stop()


def test_a_call_whose_request_never_arrives_is_cancelled_and_gives_its_slot_back():
    publisher = WeightPublisher(port=0, max_subscribers=1, token=TOKEN, request_arrival_s=1.0)  # 17 slots
    try:
        with silent_calls(publisher.address, REPORT, 17, token=TOKEN) as calls:  # every slot
            began = time.monotonic()
            for call in calls:
                assert call.exception(timeout=10).code() == grpc.StatusCode.CANCELLED
            assert time.monotonic() - began < 5
            actor = ProgressReporter(publisher.address, 0, timeout_s=2.0, token=TOKEN)
            assert actor.report(env_steps=100, episodes=1)
            actor.close()
        assert publisher.refused["late"] == 17 and publisher.totals() == (100, 1)
    finally:
        publisher.stop()


SERVER = """
import sys, torch
from learner.weight_service import WeightPublisher
publisher = WeightPublisher(port=0, token=sys.argv[1])
publisher.publish({"w": torch.ones(2, 2)}, 1)
print(publisher.address, flush=True)
sys.stdin.read()
publisher.stop()
"""


def peak_resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) << 10


def test_large_bodies_without_the_token_are_never_read_into_the_servers_memory():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, TOKEN],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    channel = None
    try:
        address = server.stdout.readline().strip()
        assert fetch_latest(address, timeout=20, token=TOKEN).version == 1
        before = peak_resident_bytes(server.pid)
        channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        body = bytes(16 << 20)
        calls = [channel.unary_unary(REPORT).future(body, timeout=60) for _ in range(8)]  # 128 MiB in all
        assert {call.exception().code() for call in calls} == {grpc.StatusCode.UNAUTHENTICATED}
        # 128 MiB sent; the server holds at most its 64 KiB window per stream (measured: under 1 MiB)
        assert peak_resident_bytes(server.pid) - before < 8 << 20
    finally:
        if channel is not None:
            channel.close()
        server.stdin.close()
        server.wait(timeout=20)


# --- where services listen ------------------------------------------------------------------------


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_weight_service_and_metrics_listen_on_loopback_by_default():
    from common.net import pick_free_port
    from deploy.builder import Builder

    weights, metrics_port = pick_free_port("127.0.0.1"), pick_free_port("127.0.0.1")
    overrides = [f"actor.weight_server=127.0.0.1:{weights}", f"run.metrics_port={metrics_port}"]
    cfg = resolve_config(map_name="3m", overrides=overrides)
    assert cfg.run.bind_address == "127.0.0.1"  # the default
    builder = Builder(cfg)
    publisher, metrics = builder.weight_publisher(), builder.metrics("learner")
    try:
        for port in (weights, metrics_port):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        outside = non_loopback_address()
        if outside is None:
            pytest.skip("this machine has no non-loopback address to try")
        for port in (weights, metrics_port):
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
    finally:
        publisher.stop()
        metrics.close()


# --- docker compose -------------------------------------------------------------------------------


def test_compose_publishes_prometheus_and_grafana_on_this_host_only_and_replay_nowhere():
    published = {name: s.get("ports", []) for name, s in services().items() if s.get("ports")}
    assert set(published) == {"prometheus", "grafana"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    assert all("expose" not in s for s in services().values())


def test_compose_services_share_a_generated_token_file():
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "secrets" in config["volumes"]
    for name in ("learner", "actor", "evaluator"):
        service = services()[name]
        token_file = service["environment"]["OVMSE__run__auth_token_file"]
        assert any(v == f"secrets:{os.path.dirname(token_file)}" for v in service["volumes"]), name
    assert "secrets" not in " ".join(services()["replay"]["volumes"])  # Reverb cannot use it


def grafana_start(tmp_path, password: str = "") -> tuple[str, str]:
    """Run the Grafana service's start script here, with its data directory in tmp_path and
    Grafana itself replaced by `env`; returns (what Grafana would be started with, password)."""
    script = services()["grafana"]["command"][0].replace("$$", "$")
    script = script.replace("/var/lib/grafana", str(tmp_path)).replace("exec /run.sh", "exec env")
    env = {"PATH": os.environ["PATH"], "GRAFANA_ADMIN_PASSWORD": password}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout, (tmp_path / "admin_password").read_text()


def test_grafana_has_no_default_admin_password(tmp_path):
    environment = services()["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment
    assert services()["grafana"]["entrypoint"] == ["/bin/sh", "-c"]
    (tmp_path / "a").mkdir()
    started, password = grafana_start(tmp_path / "a")
    assert f"GF_SECURITY_ADMIN_PASSWORD__FILE={tmp_path / 'a' / 'admin_password'}" in started
    assert "GRAFANA_ADMIN_PASSWORD=" not in started.replace("GF_SECURITY_ADMIN_PASSWORD__FILE", "")
    assert len(password) >= 24 and password != "admin"
    assert stat.S_IMODE((tmp_path / "a" / "admin_password").stat().st_mode) == 0o600
    assert grafana_start(tmp_path / "a")[1] == password  # kept across restarts
    (tmp_path / "b").mkdir()
    assert grafana_start(tmp_path / "b")[1] != password  # another install, another password
    (tmp_path / "c").mkdir()
    assert grafana_start(tmp_path / "c", password="chosen-by-me")[1] == "chosen-by-me"
