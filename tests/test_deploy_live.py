"""Live deployment runs (marker `deploy_live`; alone: `pytest -m deploy_live`).

- compose equivalence: every ovmse service of docker-compose.yml started as a local process with
  the file's command, environment, mounts (as directories) and start order (depends_on, health
  checks), host names and ports remapped to free loopback ports, reaches a finished run with test
  win rates reported;
- a real Prometheus server (Debian package) scrapes a live `ovmse run`: each actor's
  ovmse_env_steps_total > 0 and a learner update count that grows; every metric the Grafana
  dashboard queries is exported, and every dashboard query returns data;
- Ray: `deploy.ray_launch` on a local Ray instance with 2 actors; one actor process is killed, Ray
  restarts it, it finds the servers again and the run goes on.

The runs are shrunk to fit two cores (small batches, few updates); everything else is as deployed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import (
    DASHBOARD,
    ROOT,
    argv,
    concrete,
    dashboard_queries,
    default_services,
    environment,
    metric_family,
    mounts,
    queried_metrics,
    require_tool,
)

pytestmark = [pytest.mark.deploy_live, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
# A run small enough for two cores; applied as environment overrides, like any compose setting.
SHRINK = {
    "OVMSE__learner__batch_size": "16",
    # An offline phase, then online: its length is not what these tests are about (an offline
    # update of 2s3z's CQL loss is the costliest step of the run).
    "OVMSE__learner__offline_updates": "10",
    "OVMSE__learner__checkpoint_interval": "0",
    # 16 episodes (~1,600 steps of a fresh policy's ~100-step episodes) fill the online table before
    # the first online update: 40 episodes go well past that, into the rate limiter's throttling.
    "OVMSE__run__online_env_steps": "4000",
    "OVMSE__run__eval_interval_steps": "1000",
    "OVMSE__run__log_interval_s": "5",
    "OVMSE__actor__test_episodes": "8",
    "OVMSE__actor__final_test_episodes": "16",
}
RUN_TIMEOUT_S = 900
ACTORS_EXIT_AFTER_LEARNER_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVMSE")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # One torch thread per process, as the actors and the evaluator set for themselves: five
    # processes share two cores, and a learner with two threads waits at every parallel region for
    # a thread whose core another process holds (an update measured 0.35 s with one thread, 28 s
    # with two, on a loaded 2-core machine).
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict, cwd: Path, logs: Path):
        self.name, self.args = name, args
        self.log = logs / f"{name.replace('/', '_')}.log"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 30.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def wait_for(predicate, timeout_s: float, what: str, watch: list[Proc] = (), interval_s: float = 0.5):
    """Poll `predicate` until it returns something truthy; fail early when a watched process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in watch:
            if not proc.alive() and proc.popen.returncode != 0:
                pytest.fail(f"{what}: {proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        time.sleep(interval_s)
    logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in watch)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")


def scrape(address: str) -> dict[str, list[tuple[dict, float]]]:
    """{sample name: [(labels, value)]} from http://address/metrics ({} when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return dict(out)


def sample_value(samples: dict, name: str, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def read_jsonl(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# --- compose equivalence -----------------------------------------------------------------------


class LocalCompose:
    """docker-compose.yml's ovmse services as local processes: one directory per container (its
    mounts are symbolic links to a directory per named volume, or to the repository's files), the
    service's argv and environment with service names -> 127.0.0.1 and every container port -> its
    own free loopback port."""

    def __init__(self, tmp: Path, replicas: dict[str, int], extra_env: dict[str, str]):
        self.tmp, self.replicas, self.extra_env = tmp, replicas, extra_env
        self.services = {n: s for n, s in default_services().items() if "build" in s}
        self.ports: dict[tuple[str, int], int] = {}
        self.procs: dict[str, Proc] = {}
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def port(self, owner: str, port: int) -> int:
        if (owner, port) not in self.ports:
            self.ports[owner, port] = free_port()
        return self.ports[owner, port]

    def volume(self, name: str) -> Path:
        path = self.tmp / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def instances(self, name: str) -> list[str]:
        count = self.replicas.get(name, 1)
        return [name] if count == 1 else [f"{name}#{i}" for i in range(count)]

    def container(self, service_name: str, instance: str) -> tuple[Path, Path, dict[str, str]]:
        """(container root, working directory, {container path: host path})."""
        service = self.services[service_name]
        root = self.tmp / "containers" / instance.replace("#", "_")
        paths = {}
        for target, source in mounts(service).items():
            host = self.volume(source) if "/" not in source else (ROOT / source).resolve()
            link = root / target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(host)
            paths[target] = str(link)
        workdir = root / service.get("working_dir", "/").lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        return root, workdir, paths

    def remap_env(self, instance: str, env: dict[str, str]) -> dict[str, str]:
        names = set(self.services)
        out = {}
        for key, value in env.items():
            host, _, port = value.rpartition(":")
            if value in names:
                value = "127.0.0.1"
            elif host in names and port.isdigit():
                value = f"127.0.0.1:{self.port(host, int(port))}"
            elif key.endswith("__port"):  # the port of the server named by the section's address
                server = env.get(key[: -len("port")] + "address", "")
                value = str(self.port(server if server in names else instance, int(value)))
            elif key.endswith("__metrics_port"):
                value = str(self.port(instance, int(value)))
            elif value == "0.0.0.0":
                value = "127.0.0.1"
            out[key] = value
        return out

    @staticmethod
    def remap_paths(text: str, paths: dict[str, str]) -> str:
        for target in sorted(paths, key=len, reverse=True):
            text = text.replace(target, paths[target])
        return text

    def start(self, service_name: str) -> list[Proc]:
        service = self.services[service_name]
        started = []
        for index, instance in enumerate(self.instances(service_name)):
            _, workdir, paths = self.container(service_name, instance)
            args = [self.remap_paths(a, paths) for a in argv(service)]
            if args[0] == "ovmse":
                args[0] = str(VENV_BIN / "ovmse")
            env = {**environment(service), **self.extra_env}
            env = {k: self.remap_paths(v, paths) for k, v in self.remap_env(instance, env).items()}
            if instance != service_name:  # replicas differ by host name in compose; here by id
                env["OVMSE_ACTOR_ID"] = str(index)
            proc = Proc(instance, args, {**clean_environ(), **env}, workdir, self.logs)
            self.procs[instance] = proc
            started.append(proc)
        return started

    def healthy(self, service_name: str) -> bool:
        """The service's own health check command, remapped like the service."""
        test = self.services[service_name]["healthcheck"]["test"]
        assert test[0] == "CMD", test
        for instance in self.instances(service_name):
            args = list(test[1:])
            for i, arg in enumerate(args[:-1]):
                if arg in ("--metrics", "--tcp"):
                    args[i + 1] = str(self.port(instance, int(args[i + 1])))
            if args[0] == "python":
                args[0] = sys.executable
            done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=30)
            if done.returncode != 0:
                return False
        return True

    def start_in_order(self, timeout_s: float) -> None:
        """Start services as compose would: each once its depends_on conditions hold."""
        pending = list(self.services)
        while pending:
            ready = [
                n
                for n in pending
                if all(
                    d in self.services and d not in pending for d in self.services[n].get("depends_on", {})
                )
            ]
            assert ready, f"depends_on has a cycle among {pending}"
            for name in ready:
                for dep, rule in self.services[name].get("depends_on", {}).items():
                    self.wait_condition(dep, rule["condition"], timeout_s)
                self.start(name)
                pending.remove(name)

    def wait_condition(self, name: str, condition: str, timeout_s: float) -> None:
        procs = [self.procs[i] for i in self.instances(name)]
        if condition == "service_completed_successfully":
            for proc in procs:
                code = proc.popen.wait(timeout_s)
                assert code == 0, f"{name} exited with {code}:\n{proc.tail()}"
        elif condition == "service_healthy":
            wait_for(lambda: self.healthy(name), timeout_s, f"{name} healthy", procs, interval_s=0.5)
        else:
            assert condition == "service_started", condition

    def stop_all(self) -> dict[str, int]:
        order = sorted(
            self.procs,
            key=lambda n: (
                ["actor", "evaluator", "learner", "replay"].index(n.split("#")[0])
                if n.split("#")[0] in ("actor", "evaluator", "learner", "replay")
                else -1
            ),
        )
        return {name: self.procs[name].stop() for name in order}


def test_compose_services_as_local_processes_reach_a_finished_run(tmp_path):
    from common.config import resolve_config
    from deploy.cli import env_overrides

    local = LocalCompose(tmp_path, replicas={"actor": 2}, extra_env=SHRINK)
    learner = default_services()["learner"]
    config_file = ROOT / mounts(learner)["/etc/ovmse/ovmse.yaml"]
    cfg = resolve_config(file=str(config_file), overrides=env_overrides({**environment(learner), **SHRINK}))
    run_dir = local.volume("runs") / cfg.run.name
    try:
        local.start_in_order(timeout_s=RUN_TIMEOUT_S)
        assert (local.volume("datasets") / Path(cfg.run.dataset).name).is_file()
        learner, evaluator = local.procs["learner"], local.procs["evaluator"]
        actors = [local.procs["actor#0"], local.procs["actor#1"]]
        wait_for(
            lambda: not learner.alive() and not evaluator.alive(),
            RUN_TIMEOUT_S,
            "the learner to reach the budget and the evaluator to score the final policy",
            [learner, evaluator, *actors, local.procs["replay"]],
        )
        for proc in (learner, evaluator):
            assert proc.popen.returncode == 0, f"{proc.name}:\n{proc.tail()}"
        records = read_jsonl(run_dir / "metrics.jsonl")
        evals = [r for r in records if r.get("kind") == "eval"]
        finals = [r for r in records if r.get("kind") == "final_eval"]
        assert len(evals) >= 2 and all(0.0 <= e["win_rate"] <= 1.0 for e in evals)
        assert finals and finals[-1]["episodes"] == int(SHRINK["OVMSE__actor__final_test_episodes"])
        assert max(e["env_steps"] for e in evals) >= int(SHRINK["OVMSE__run__online_env_steps"])
        assert (run_dir / "checkpoints" / "learner.pt").is_file()
        assert (run_dir / "test_win_rate.png").is_file()
        # In compose nothing stops the actors but themselves: they must end once the learner is done.
        deadline = time.monotonic() + ACTORS_EXIT_AFTER_LEARNER_S
        while any(a.alive() for a in actors) and time.monotonic() < deadline:
            time.sleep(0.2)
        still = [a.name for a in actors if a.alive()]
        assert not still, (
            f"{still} still running {ACTORS_EXIT_AFTER_LEARNER_S:.0f}s after the learner finished "
            "(an actor blocked in EpisodeWriter.write on the online table's rate limiter never sees "
            "the learner's final `done` version)"
        )
        assert all(a.popen.returncode == 0 for a in actors), [a.tail() for a in actors]
    finally:
        codes = local.stop_all()
    assert codes["replay"] == 0, local.procs["replay"].tail()
    # The replay server checkpointed both tables into the reverb volume on SIGTERM.
    assert any(local.volume("reverb").rglob("DONE")), sorted(local.volume("reverb").rglob("*"))[:20]


# --- Prometheus scraping a live embedded run -----------------------------------------------------


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        try:
            socks = []
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def small_config_file(tmp: Path, run: dict | None = None, actor: dict | None = None) -> Path:
    from common.config import resolve_config
    from deploy.recipes import CollectRequest, collect_dataset

    dataset = tmp / "datasets" / "2s3z_medium.h5"
    data = {
        "preset": {"map": "2s3z", "dataset": "medium", "method": "ovmse"},
        "learner": {"batch_size": 16, "offline_updates": 10, "checkpoint_interval": 0},
        "actor": {
            "num_actors": 2,
            "envs_per_actor": 4,
            "test_episodes": 8,
            "final_test_episodes": 0,
            **(actor or {}),
        },
        "run": {
            "name": "live",
            "run_dir": str(tmp / "runs"),
            "dataset": str(dataset),
            "online_env_steps": 10**9,  # runs until stopped
            "eval_interval_steps": 500,
            "log_interval_s": 5,
            **(run or {}),
        },
        "replay": {"port": 0},
    }
    path = tmp / "live.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = resolve_config(file=str(path))
    dataset.parent.mkdir(parents=True, exist_ok=True)
    request = CollectRequest(out=str(dataset), episodes=200, policy="heuristic", epsilon=0.2, num_envs=16)
    collect_dataset(cfg, request, progress=False)
    return path


class PromServer:
    def __init__(self, tmp: Path, targets: dict[str, list[str]]):
        binary = require_tool("prometheus")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = Proc(
            "prometheus",
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            clean_environ(),
            tmp,
            tmp,
        )

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
        except OSError:
            return []
        assert body["status"] == "success", body
        return body["data"]["result"]


# --- Ray -------------------------------------------------------------------------------------------
# Before the Prometheus tests: their module-scoped run keeps both cores busy until the module ends,
# which made this test four times slower.


def test_ray_launch_restarts_a_killed_actor_and_the_run_goes_on(tmp_path):
    import ray

    from common.config import resolve_config
    from deploy.ray_launch import RayLaunch, absolute_paths, init_ray

    # Actor 0 is paused from the kill until the restarted actor plays (else it alone played
    # 3,800-5,500 steps meanwhile, on a loaded 2-core machine, and the budget had to be 12,000), so
    # a budget past the steps played before the kill (1,500-1,800 measured) outlasts the restart.
    # Evaluations far apart: nothing here reads them but the final one, and the evaluator's
    # episodes would take the cores from the actors and the learner.
    budget = 4000
    config = small_config_file(
        tmp_path,
        run={"online_env_steps": budget, "eval_interval_steps": 2000},
        actor={"final_test_episodes": 16},
    )
    cfg = absolute_paths(resolve_config(file=str(config)))
    assert init_ray(None, num_actors=2)
    launch = paused = None
    try:
        launch = RayLaunch(cfg, 2, local=True, max_restarts=2).start()

        def actor_steps(i: int) -> float:
            address = launch.addresses().get(f"metrics/actor/{i}")
            return sample_value(scrape(address), "ovmse_env_steps_total", actor=str(i)) if address else 0.0

        def learner_updates() -> float:
            address = launch.addresses().get("metrics/learner")
            return sample_value(scrape(address), "ovmse_learner_updates_total") if address else 0.0

        wait_for(lambda: actor_steps(0) > 0 and actor_steps(1) > 0, RUN_TIMEOUT_S, "both actors stepping")
        wait_for(learner_updates, RUN_TIMEOUT_S, "learner updates")
        before = {"address": launch.addresses()["metrics/actor/1"], "updates": learner_updates()}
        pid, paused = launch.pid("actor/1"), launch.pid("actor/0")
        os.kill(pid, signal.SIGKILL)
        os.kill(paused, signal.SIGSTOP)

        def restarted() -> bool:
            return (
                launch.starts().get("actor/1", 0) >= 2
                and launch.addresses()["metrics/actor/1"] != before["address"]
            )

        wait_for(restarted, 300, "Ray to restart actor 1")
        new_pid = launch.pid("actor/1")
        assert new_pid != pid
        wait_for(lambda: actor_steps(1) > 0, RUN_TIMEOUT_S, "the restarted actor to play")
        os.kill(paused, signal.SIGCONT)
        paused = None
        wait_for(lambda: learner_updates() > before["updates"], 300, "the learner to keep updating")
        targets = json.loads(launch.write_prometheus_targets().read_text())  # what wait() keeps current
        assert {g["labels"]["job"] for g in targets} == {"replay", "learner", "actor", "evaluator"}
        assert launch.wait(RUN_TIMEOUT_S), "the run did not finish"
        summary = launch.stop()
        launch = None
        assert summary["starts"]["actor/1"] == 2 and summary["starts"]["actor/0"] == 1
        assert summary["starts"]["learner"] == 1 and summary["starts"]["replay"] == 1
        results = summary["results"]
        assert results["learner"]["finished"] and results["learner"]["env_steps"] >= budget
        assert results["evaluator"]["final_win_rate"] is not None
        assert not [r for r in results.values() if "error" in r], results
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        if launch is not None:
            launch.stop(timeout_s=30)
        ray.shutdown()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """`ovmse run` with metrics on consecutive ports, scraped by a real Prometheus server."""
    tmp = tmp_path_factory.mktemp("live")
    config = small_config_file(tmp)
    base = consecutive_free_ports(5)  # replay, learner, evaluator, actor 0, actor 1 (deploy/embedded.py)
    logs = tmp / "logs"
    logs.mkdir()
    run = Proc(
        "ovmse-run",
        [str(VENV_BIN / "ovmse"), "run", "--config", str(config), "--set", f"run.metrics_port={base}"],
        clean_environ(),
        tmp,
        logs,
    )
    targets = {
        "replay": [f"127.0.0.1:{base}"],
        "learner": [f"127.0.0.1:{base + 1}"],
        "evaluator": [f"127.0.0.1:{base + 2}"],
        "actor": [f"127.0.0.1:{base + 3}", f"127.0.0.1:{base + 4}"],
    }
    prometheus = PromServer(tmp, targets)
    try:
        yield run, prometheus, targets
    finally:
        prometheus.proc.stop()
        run.stop(grace_s=120)


def test_prometheus_scrapes_every_actor_and_a_growing_learner(live_run):
    run, prometheus, _ = live_run
    watch = [run, prometheus.proc]

    def actors_stepping():
        result = prometheus.query('ovmse_env_steps_total{job="actor"} > 0')
        return {r["metric"]["actor"] for r in result} >= {"0", "1"}

    wait_for(actors_stepping, RUN_TIMEOUT_S, "ovmse_env_steps_total > 0 for both actors", watch, 2.0)

    def updates() -> float:
        result = prometheus.query('sum(ovmse_learner_updates_total{job="learner"})')
        return float(result[0]["value"][1]) if result else 0.0

    first = wait_for(updates, RUN_TIMEOUT_S, "learner updates in Prometheus", watch, 2.0)
    wait_for(lambda: updates() > first, 300, f"the learner's update count to grow past {first}", watch, 2.0)
    for result in prometheus.query("up"):
        assert result["value"][1] == "1", result["metric"]  # every process answered its scrape


def test_every_dashboard_metric_is_exported_and_every_query_has_data(live_run):
    run, prometheus, targets = live_run
    watch = [run, prometheus.proc]
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    wanted = queried_metrics(queries)

    def exported() -> set[str]:
        names = set()
        for addresses in targets.values():
            for address in addresses:
                names |= {metric_family(n) for n in scrape(address)}
        return names

    # Labelled metrics appear once set: wait until the run has produced them all.
    wait_for(lambda: wanted <= exported(), RUN_TIMEOUT_S, "every dashboard metric exported", watch, 2.0)

    def missing() -> list[str]:
        return [q for q in queries if not prometheus.query(concrete(q, "30s"))]

    try:
        wait_for(lambda: not missing(), 300, "every dashboard query to return data", watch, 2.0)
    except pytest.fail.Exception:
        pytest.fail(f"dashboard queries without data: {missing()}")
