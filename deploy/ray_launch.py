"""`ovmse ray-launch`: the replay server, the learner, N actors and the evaluator as Ray actors.

The same process entry points as `ovmse run` and docker compose (`serve_replay`, `run_learner`,
`run_actor`, `run_evaluator`), each wrapped in a Ray actor class:

- placement: the replay server on a node advertising the `ovmse_replay` resource when the cluster
  has one (the head node in deploy/ray/cluster.yaml), else anywhere; the learner with `num_gpus=1`
  when the cluster has a GPU; the actors spread over the nodes (SPREAD); the evaluator anywhere.
- addresses: nothing is hard-coded (replay.port, actor.weight_server and run.metrics_port are
  ignored). Every component picks free ports on its node, and the servers
  (replay, weight service) register `ip:port` in a small named registry actor. A component waits
  for the addresses it needs, and when one changes (a server was restarted, perhaps on another
  node) it stops its process loop and starts it again against the new address.
- failures: components are restarted by Ray (`max_restarts`) and their blocking `run` call is
  retried (`max_task_retries`), so a killed actor process comes back, finds the servers through the
  registry and plays on; the learner resumes from its checkpoint (checkpoints/learner.pt).
- access: the weight service asks every client for the run's token (common/auth.py): OVMSE_TOKEN
  or run.auth_token_file when set, else one generated per launch and handed to each component.
  Reverb cannot bind one interface or ask for a token: on a cluster its port is reachable from
  every host that can reach the node, so keep the nodes on a private network (docs/reliability.md).
- metrics: every component serves Prometheus /metrics on a free port of its node and registers it;
  the launcher writes them to `<run dir>/prometheus_targets.json` (Prometheus `file_sd_configs`,
  labelled job=replay|learner|actor|evaluator as in compose, so the Grafana dashboard works as is).

`launch(cfg, address, num_actors, stop_after_s)` runs to the end (the learner reaches
run.online_env_steps) or for `stop_after_s` seconds; `address=None` starts a local Ray instance.
`RayLaunch` is the same, step by step (start, inspect, stop), for tests and notebooks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common.auth import new_token, resolve_token
from common.config.sections import Config
from deploy.ray_components import (
    REGISTRY_NAME,
    REPLAY_RESOURCE,
    ActorComponent,
    EvaluatorComponent,
    LearnerComponent,
    Registry,
    ReplayComponent,
    cluster_has_gpu,
)

DEFAULT_MAX_RESTARTS = 5
TARGETS_FILE = "prometheus_targets.json"
LOCAL_OBJECT_STORE_BYTES = 256 << 20


class RayLaunch:
    """Start the components on the connected Ray cluster, watch them, stop them.

    `ray.init` must have been called (see `launch`). `local=True` keeps every server on loopback
    (a Ray instance on this machine)."""

    def __init__(
        self,
        cfg: Config,
        num_actors: int | None = None,
        *,
        local: bool = False,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        actor_cpus: float = 1.0,
        token: str | None = None,
    ):
        self.num_actors = cfg.actor.num_actors if num_actors is None else int(num_actors)
        # The components read the actor count from the config (the learner bounds reports by it).
        self.cfg = dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, num_actors=self.num_actors))
        # Every component gets this run's token (the configured one, else a new one per launch).
        self.token = token or resolve_token(cfg.run.auth_token_file) or new_token()
        self.local = local
        self.max_restarts = max_restarts
        self.actor_cpus = actor_cpus
        self.run_dir = cfg.run.path
        self.registry = None
        self.registry_name = f"{REGISTRY_NAME}_{uuid.uuid4().hex[:12]}"  # one per launch
        self.components: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}  # name -> ObjectRef of its run()
        self.results: dict[str, Any] = {}
        self._targets_written: dict[str, str] = {}

    # placement
    def _options(self, role: str) -> dict:
        import ray

        opts: dict[str, Any] = {
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_restarts,
            "max_concurrency": 4,  # run() blocks; pid(), node() and stop() answer meanwhile
            "num_cpus": 1,
        }
        if role == "replay" and ray.cluster_resources().get(REPLAY_RESOURCE, 0) >= 1:
            opts["resources"] = {REPLAY_RESOURCE: 1}
        if role == "learner" and cluster_has_gpu():
            opts["num_gpus"] = 1
        if role == "actor":
            opts["scheduling_strategy"] = "SPREAD"
            opts["num_cpus"] = self.actor_cpus
        return opts

    def _start(self, name: str, cls: type, index: int | None = None) -> None:
        import ray

        remote_cls = ray.remote(cls).options(**self._options(cls.role))
        handle = remote_cls.remote(self.cfg, self.registry_name, index, self.local, self.token)
        self.components[name] = handle
        self.runs[name] = handle.run.remote()

    def start(self) -> RayLaunch:
        import ray

        self.registry = ray.remote(num_cpus=0)(Registry).options(name=self.registry_name).remote()
        self._start("replay", ReplayComponent)
        self._start("learner", LearnerComponent)
        for i in range(self.num_actors):
            self._start(f"actor/{i}", ActorComponent, i)
        self._start("evaluator", EvaluatorComponent)
        return self

    # inspection
    def addresses(self) -> dict[str, str]:
        import ray

        return ray.get(self.registry.addresses.remote())

    def starts(self) -> dict[str, int]:
        import ray

        return ray.get(self.registry.starts.remote())

    def pid(self, name: str, timeout_s: float = 60.0) -> int:
        import ray

        return int(ray.get(self.components[name].pid.remote(), timeout=timeout_s))

    def write_prometheus_targets(self) -> Path:
        """<run dir>/prometheus_targets.json for Prometheus `file_sd_configs` (rewritten when an
        address changes); returns its path."""
        path = self.run_dir / TARGETS_FILE
        metrics = {
            k.removeprefix("metrics/"): v for k, v in self.addresses().items() if k.startswith("metrics/")
        }
        if metrics == self._targets_written:
            return path
        groups = [
            {"targets": [address], "labels": {"job": name.split("/")[0], "component": name}}
            for name, address in sorted(metrics.items())
        ]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, path)
        self._targets_written = metrics
        return path

    def _collect_finished(self) -> None:
        import ray

        pending = {ref: name for name, ref in self.runs.items() if name not in self.results}
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            name = pending[ref]
            try:
                self.results[name] = ray.get(ref)
            except Exception as error:  # a component that failed for good (restarts used up)
                self.results[name] = {"name": name, "error": " ".join(str(error).splitlines()[-3:])}

    def wait(self, timeout_s: float | None = None, progress: bool = False) -> bool:
        """Block until the learner and the evaluator are done (True) or `timeout_s` passes (False).
        Raises RuntimeError when the learner or the replay server failed for good."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_line = 0.0
        while deadline is None or time.monotonic() < deadline:
            self._collect_finished()
            self.write_prometheus_targets()
            for name in ("replay", "learner"):
                if "error" in self.results.get(name, {}):
                    raise RuntimeError(f"ray-launch: {name} failed: {self.results[name]['error']}")
            if "learner" in self.results and "evaluator" in self.results:
                return True
            if progress and time.monotonic() >= next_line:
                self._print_progress()
                next_line = time.monotonic() + 10.0
            time.sleep(0.5)
        return False

    def _print_progress(self) -> None:
        path = self.run_dir / "learner_progress.json"
        try:
            p = json.loads(path.read_text())
            line = f"env steps {p.get('env_steps', 0)}/{p.get('budget', '?')}, updates {p.get('updates', 0)}"
        except (OSError, ValueError):
            line = "starting"
        restarts = {k: v - 1 for k, v in self.starts().items() if v > 1}
        print(f"ray-launch: {line}" + (f"; restarts {restarts}" if restarts else ""), flush=True)

    def stop(self, timeout_s: float = 60.0, clients_grace_s: float = 15.0) -> dict:
        """Stop every component and return what each one's run() returned.

        In dependency order: actors and the evaluator, then the learner (which checkpoints), then
        the replay server (which checkpoints). An actor waiting on the replay server's rate limiter
        (the learner no longer samples) cannot notice its stop before the replay server goes; its
        writer then fails, which counts as stopped."""
        import ray

        clients = [n for n in self.components if n.startswith("actor/")] + ["evaluator"]
        for group, wait_s in ((clients, clients_grace_s), (["learner"], timeout_s), (["replay"], timeout_s)):
            group = [n for n in group if n not in self.results]
            for name in group:
                with contextlib.suppress(Exception):  # a component that is restarting or gone
                    ray.get(self.components[name].stop.remote(), timeout=10)
            if group:
                ray.wait([self.runs[n] for n in group], num_returns=len(group), timeout=wait_s)
            self._collect_finished()
        pending = [self.runs[n] for n in self.components if n not in self.results]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=clients_grace_s)
            self._collect_finished()
        for name in self.components:
            self.results.setdefault(name, {"name": name, "error": "did not stop in time"})
        summary = {
            "results": dict(self.results),
            "starts": self.starts(),
            "addresses": self.addresses(),
            "run_dir": str(self.run_dir),
        }
        for handle in [*self.components.values(), self.registry]:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        return summary


def init_ray(address: str | None, num_actors: int) -> bool:
    """Connect to `address`, or start a local Ray instance sized for the run. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **quiet)
        return True
    # Logical CPUs: every component asks for one, even on a smaller machine.
    ray.init(
        num_cpus=max(os.cpu_count() or 1, 3 + num_actors),
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,  # only handles and small results travel
        **quiet,
    )
    return True


def absolute_paths(cfg: Config, base: Path | None = None) -> Config:
    """The config with its relative paths (run directory, dataset, checkpoints) made absolute
    against `base` (default: this directory), so that Ray workers, whatever their working
    directory, read and write the same files as a local run would. On a cluster, give absolute
    paths that exist on every node (a shared file system, or the image's /data)."""
    base = Path.cwd() if base is None else base

    def fix(path: str | None) -> str | None:
        return None if path is None else str(base / path)  # an absolute `path` stays as it is

    run = dataclasses.replace(
        cfg.run,
        run_dir=fix(cfg.run.run_dir),
        dataset=fix(cfg.run.dataset),
        init_checkpoint=fix(cfg.run.init_checkpoint),
    )
    replay = dataclasses.replace(cfg.replay, checkpoint_dir=fix(cfg.replay.checkpoint_dir))
    return dataclasses.replace(cfg, run=run, replay=replay)


def launch(
    cfg: Config,
    address: str | None = None,
    num_actors: int | None = None,
    stop_after_s: float | None = None,
    progress: bool = False,
) -> dict:
    """Run the whole job on Ray: until the learner finishes, or for `stop_after_s` seconds.
    `address=None` starts a local Ray instance (servers on loopback). Returns the components'
    results, how often each started, the addresses they registered and the run directory."""
    import ray

    num_actors = cfg.actor.num_actors if num_actors is None else num_actors
    cfg = absolute_paths(cfg)
    started_ray = init_ray(address, num_actors)
    try:
        run = RayLaunch(cfg, num_actors, local=address is None).start()
        try:
            finished = run.wait(stop_after_s, progress=progress)
        finally:
            summary = run.stop()
        summary["finished"] = finished
        return summary
    finally:
        if started_ray:
            ray.shutdown()


def main(args: argparse.Namespace) -> int:
    """`ovmse ray-launch [--address ADDRESS] [config options]`."""
    from deploy.config_args import config_from_args

    cfg = config_from_args(args)
    address = getattr(args, "address", None)
    print(
        f"ray-launch: replay, learner, {cfg.actor.num_actors} actors and the evaluator on "
        f"{address or 'a local Ray instance'}; results in {cfg.run.path}",
        flush=True,
    )
    summary = launch(cfg, address, cfg.actor.num_actors, getattr(args, "stop_after_s", None), progress=True)
    learner = summary["results"].get("learner", {})
    evaluator = summary["results"].get("evaluator", {})
    print(
        f"ray-launch: learner {learner.get('updates', '?')} updates, {learner.get('env_steps', '?')} env "
        f"steps; final test win rate {evaluator.get('final_win_rate')}; starts {summary['starts']}",
        flush=True,
    )
    failed = {k: v["error"] for k, v in summary["results"].items() if isinstance(v, dict) and "error" in v}
    for name, error in failed.items():
        print(f"ray-launch: {name}: {error}", file=sys.stderr)
    return 0 if summary["finished"] and not failed else 1
