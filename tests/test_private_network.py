"""`run.private_network`: the run's services listen where no process outside its namespace can
connect, neither on this host's loopback nor on its other addresses, while processes inside reach
each other over their own loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest

from common.net import pick_free_port
from deploy import private_network

NOT_HERE = private_network.unavailable()  # tried once: it starts a process
pytestmark = pytest.mark.skipif(NOT_HERE is not None, reason=f"no private network here: {NOT_HERE}")

LISTEN_INSIDE = """
import socket, sys
server = socket.socket()
server.bind(("0.0.0.0", {port}))  # every interface, as Reverb binds
server.listen()
socket.create_connection(("127.0.0.1", {port}), timeout=2).close()  # reachable from inside
print("listening", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def outside_addresses() -> list[str]:
    addresses = ["127.0.0.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            addresses.append(probe.getsockname()[0])
        except OSError:
            pass
    return addresses


def test_a_service_bound_to_every_interface_inside_is_unreachable_from_outside():
    port = pick_free_port("127.0.0.1")
    inside = subprocess.Popen(
        private_network.command_inside(["-c", LISTEN_INSIDE.format(port=port)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert inside.stdout.readline().strip() == "listening"
        for address in outside_addresses():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        inside.stdin.close()
        inside.wait(timeout=10)
    assert inside.returncode == 0


def test_the_same_listener_outside_is_reachable():
    """The control: without the namespace the listener above is reachable, so the test above
    measures the namespace, not a firewall."""
    port = pick_free_port("127.0.0.1")
    outside = subprocess.Popen(
        [sys.executable, "-c", LISTEN_INSIDE.format(port=port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert outside.stdout.readline().strip() == "listening"
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        outside.stdin.close()
        outside.wait(timeout=10)


def test_a_process_started_inside_knows_it():
    done = subprocess.run(
        private_network.command_inside(["-c", "from deploy import private_network as p; print(p.inside())"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "True", done.stderr


@pytest.mark.slow
def test_ovmse_run_with_a_private_network_trains_where_no_one_outside_reaches_its_services(tmp_path):
    """A real `ovmse run --set run.private_network=true`: while it trains, neither the replay server
    (which binds every interface) nor the weight service answers from outside; Ctrl-C stops it."""
    import signal

    import yaml
    from test_first_hour_processes import SMALL_QMIX_RUN, kill_all, marked_env, processes_with, wait_for

    marker = uuid.uuid4().hex
    args = [*SMALL_QMIX_RUN, "--set", f"run.run_dir={tmp_path}", "--set", "run.name=private"]
    args += ["--set", "run.online_env_steps=1000000", "--set", "run.private_network=true"]
    run = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "run", *args],
        cwd=tmp_path,
        env=marked_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_dir = tmp_path / "private"
    try:
        wait_for(lambda: (run_dir / "learner_progress.json").exists(), 240, "training")
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        ports = [cfg["replay"]["port"], int(cfg["actor"]["weight_server"].rsplit(":", 1)[1])]
        for address in outside_addresses():
            for port in ports:
                with pytest.raises(OSError):
                    socket.create_connection((address, port), timeout=2).close()
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 130, out[-3000:]
        assert processes_with(marker) == {}, out[-3000:]
    finally:
        run.kill()
        kill_all(marker)
