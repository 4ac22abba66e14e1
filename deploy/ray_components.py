"""The Ray side of `ovmse ray-launch`: the registry actor where servers publish their addresses, and
the component actors that wrap each process entry point (replay, learner, actor, evaluator) and
restart its loop when an address it depends on changes. deploy/ray_launch.py places and watches them.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading

from common.auth import TOKEN_ENV
from common.config.sections import Config
from common.net import pick_free_port

REGISTRY_NAME = "ovmse_registry"
REPLAY_RESOURCE = "ovmse_replay"  # custom resource of the node that should hold the replay server
WATCH_INTERVAL_S = 1.0


# --- the registry: where the servers are -------------------------------------------------------


class Registry:
    """Addresses by key ("replay", "weights", "metrics/actor/3", ...) and how often each component
    has started (so restarts are visible). A Ray actor named REGISTRY_NAME; plain Python here."""

    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}
        self._starts: dict[str, int] = {}

    def set(self, key: str, address: str) -> None:
        self._addresses[key] = address

    def get(self, key: str) -> str | None:
        return self._addresses.get(key)

    def addresses(self) -> dict[str, str]:
        return dict(self._addresses)

    def started(self, name: str) -> int:
        self._starts[name] = self._starts.get(name, 0) + 1
        return self._starts[name]

    def starts(self) -> dict[str, int]:
        return dict(self._starts)


# --- components ----------------------------------------------------------------------------------


class Component:
    """One process of the run as a Ray actor: `run()` blocks until the entry point returns (or
    `stop()`), restarting the entry point when an address it depends on changes.

    Subclasses set `role`, `needs` (registry keys of the servers they dial) and implement
    `prepare(cfg, addresses)` (returns the entry point's config) and `call(cfg, stop)`."""

    role = ""
    needs: tuple[str, ...] = ()

    def __init__(
        self,
        cfg: Config,
        registry_name: str,
        index: int | None = None,
        local: bool = False,
        token: str | None = None,
    ):
        import ray

        if token:  # the run's weight-service token, read by the builder (common/auth.py)
            os.environ[TOKEN_ENV] = token
        self.cfg = cfg
        # Found by name, so that a restarted component needs nothing from the launcher's objects.
        self.registry = ray.get_actor(registry_name)
        self.index = index
        self.name = self.role if index is None else f"{self.role}/{index}"
        # Locally everything stays on loopback; on a cluster, listen everywhere and advertise the
        # node's address.
        self.advertise = "127.0.0.1" if local else ray.util.get_node_ip_address()
        self.bind = "127.0.0.1" if local else "0.0.0.0"
        self._stop = threading.Event()
        self.starts = ray.get(self.registry.started.remote(self.name))

    # small queries, answered while `run` is busy (the actor is threaded)
    def pid(self) -> int:
        return os.getpid()

    def node(self) -> dict:
        return {"ip": self.advertise, "pid": os.getpid(), "starts": self.starts, "host": socket.gethostname()}

    def stop(self) -> None:
        self._stop.set()

    def _lookup(self) -> dict[str, str] | None:
        import ray

        found = {key: ray.get(self.registry.get.remote(key)) for key in self.needs}
        return None if any(v is None for v in found.values()) else found

    def run(self) -> dict:
        import ray

        while not self._stop.is_set():
            addresses = self._lookup()
            if addresses is None:
                self._stop.wait(WATCH_INTERVAL_S / 4)
                continue
            metrics_port = pick_free_port(self.bind)
            cfg = self.prepare(self.cfg, addresses)
            cfg = dataclasses.replace(
                cfg, run=dataclasses.replace(cfg.run, metrics_port=metrics_port, bind_address=self.bind)
            )
            ray.get(self.registry.set.remote(f"metrics/{self.name}", f"{self.advertise}:{metrics_port}"))
            inner_stop = threading.Event()
            outcome: dict = {}

            def target(cfg=cfg, inner_stop=inner_stop, outcome=outcome) -> None:
                try:
                    outcome["result"] = self.call(cfg, inner_stop)
                except BaseException as error:  # handed to run() below
                    outcome["error"] = error

            thread = threading.Thread(target=target, name=f"ovmse-{self.name}", daemon=True)
            thread.start()
            moved = False
            while thread.is_alive():
                thread.join(WATCH_INTERVAL_S)
                if self._stop.is_set():
                    inner_stop.set()
                elif thread.is_alive() and self.needs and self._lookup() not in (None, addresses):
                    moved = True  # a server we dial came back elsewhere: start again against it
                    inner_stop.set()
            if "error" in outcome:
                if self._stop.is_set():  # e.g. a writer cut off by the replay server stopping first
                    failure = outcome["error"]
                    return {
                        "name": self.name,
                        "starts": self.starts,
                        "stopped": True,
                        "ended_by": f"{type(failure).__name__}: {' '.join(str(failure).splitlines())[:200]}",
                    }
                raise outcome["error"]
            if not moved:
                return {"name": self.name, "starts": self.starts, **(outcome.get("result") or {})}
        return {"name": self.name, "starts": self.starts, "stopped": True}

    def prepare(self, cfg: Config, addresses: dict[str, str]) -> Config:
        return cfg

    def call(self, cfg: Config, stop: threading.Event) -> dict:
        raise NotImplementedError


def _with_replay(cfg: Config, address: str) -> Config:
    host, port = address.rsplit(":", 1)
    return dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, address=host, port=int(port)))


def _with_weights(cfg: Config, address: str) -> Config:
    return dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, weight_server=address))


class ReplayComponent(Component):
    role = "replay"

    def prepare(self, cfg: Config, addresses: dict[str, str]) -> Config:
        return _with_replay(cfg, f"{self.advertise}:{pick_free_port()}")  # Reverb listens on all interfaces

    def call(self, cfg: Config, stop: threading.Event) -> dict:
        import ray

        from deploy.roles import serve_replay_role

        # Registered before serving: clients retry until the tables answer.
        ray.get(self.registry.set.remote("replay", cfg.replay.endpoint))
        serve_replay_role(cfg, stop)
        return {"address": cfg.replay.endpoint}


class LearnerComponent(Component):
    role = "learner"
    needs = ("replay",)

    def prepare(self, cfg: Config, addresses: dict[str, str]) -> Config:
        return _with_weights(
            _with_replay(cfg, addresses["replay"]), f"{self.advertise}:{pick_free_port(self.bind)}"
        )

    def call(self, cfg: Config, stop: threading.Event) -> dict:
        import ray

        from deploy.roles import learner_role

        ray.get(self.registry.set.remote("weights", cfg.actor.weight_server))
        return learner_role(cfg, stop)


class ActorComponent(Component):
    role = "actor"
    needs = ("replay", "weights")

    def prepare(self, cfg: Config, addresses: dict[str, str]) -> Config:
        return _with_weights(_with_replay(cfg, addresses["replay"]), addresses["weights"])

    def call(self, cfg: Config, stop: threading.Event) -> dict:
        from deploy.roles import acting_threads, actor_role

        acting_threads()
        return actor_role(cfg, int(self.index or 0), stop)


class EvaluatorComponent(Component):
    role = "evaluator"
    needs = ("weights",)

    def prepare(self, cfg: Config, addresses: dict[str, str]) -> Config:
        return _with_weights(cfg, addresses["weights"])

    def call(self, cfg: Config, stop: threading.Event) -> dict:
        from deploy.roles import acting_threads, evaluator_role

        acting_threads()
        return evaluator_role(cfg, stop)


# --- the launcher --------------------------------------------------------------------------------


def cluster_has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1
