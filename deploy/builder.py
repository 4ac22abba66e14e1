"""The builder: every part of the system, made from one `Config`, in one place.

The parts (`common/`, `actors/`, `replay/`, `learner/`) know nothing of configuration files or of how
they are wired. Every experiment (the one-process trainer, the processes of a distributed run, the
Ray components, dataset recipes, `ovmse evaluate`) asks this builder for what it needs, so a part is
built the same way everywhere: the same seeds for the same role, the same network shapes, the same
addresses.

Seeds by role (battle b of a batch env is seeded env.seed + offset + b):
    actor i     battles at offset ACTOR_SEED_STRIDE * i, exploration RNG run.seed + i
    evaluator   battles at offset EVAL_SEED_OFFSET (never the same battles as any actor), greedy
    trainer     the one-process trainer's own battles at offset 0, exploration RNG run.seed
    collector   dataset collection with a learned policy, epsilon-greedy, RNG env.seed

Reverb (and so TensorFlow) is imported only by the replay parts, when they are asked for.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path

from actors import tiles_agent
from actors.rollout import RolloutWorker
from common.config.sections import Config
from common.envs.factory import make_batch_env
from common.envs.protocol import BatchEnv
from learner.checkpoint import load_checkpoint
from learner.interface import Learner
from learner.registry import LearnerFamily, learner_family

ACTOR_SEED_STRIDE = 1000  # actor i plays battles seeded env.seed + 1000 i + b
EVAL_SEED_OFFSET = 100_000  # test battles differ from every actor's training battles
EVAL_BATTLES = 32  # battles an evaluation plays at once
RUN_DATASET = object()  # "the configured run.dataset" (None already means "no offline data")


@dataclasses.dataclass
class Builder:
    cfg: Config
    _loaded: dict = dataclasses.field(default_factory=dict, repr=False)  # dataset -> (train, held out)

    # ------------------------------------------------------------------ worlds

    def batch_env(self, battles: int, seed_offset: int = 0) -> BatchEnv:
        env_cfg = self.cfg.env
        if seed_offset:
            env_cfg = dataclasses.replace(env_cfg, seed=env_cfg.seed + seed_offset)
        return make_batch_env(env_cfg, battles)

    @cached_property
    def env_info(self) -> dict:
        """SMAC's get_env_info() of the configured world (asked once)."""
        env = make_batch_env(self.cfg.env, 1)
        try:
            return dict(env.get_env_info())
        finally:
            env.close()

    # ------------------------------------------------------------------ learner

    @property
    def family(self) -> LearnerFamily:
        """The learner family `learner.algorithm` names (learner/registry.py)."""
        return learner_family(self.cfg.learner.algorithm)

    def learner(self, checkpoint: str | Path | None = None) -> Learner:
        """The learner `learner.algorithm` names, seeded with run.seed; with `checkpoint`, restored
        from that file."""
        learner = self.family.learner_class(self.env_info, self.cfg.learner, seed=self.cfg.run.seed)
        if checkpoint is not None:
            load_checkpoint(learner, checkpoint, map_name=self.cfg.env.map_name)
        return learner

    # ------------------------------------------------------------------ acting

    def acting_network(self):
        """The network actors play with, as the learner family makes it: the shared agent network
        (Q-values) or one policy network per agent (logits; greedy over available actions works
        the same)."""
        return self.family.acting_network(self.env_info, self.cfg.learner)

    def _worker(
        self, env: BatchEnv, exploration: str, seed: int, actor_id: int, version: int
    ) -> RolloutWorker:
        agent = self.acting_network()
        return RolloutWorker(
            env,
            agent,
            exploration=exploration,
            seed=seed,
            actor_id=actor_id,
            version=version,
            inference=self.acting_back_end(),
        )

    def acting_back_end(self) -> str:
        """`actor.inference` with "auto" resolved: "tiles" (one kernel call per step, bf16 products on
        AMX tiles) where this CPU has them and the learner computes in bf16 (`learner.precision` not
        fp32), for networks shared by all agents; "torch" elsewhere."""
        cfg = self.cfg
        if cfg.actor.inference != "auto":
            return cfg.actor.inference
        shared_network = self.family.spec.shared_agent_network
        if shared_network and cfg.learner.precision != "fp32" and tiles_agent.available():
            return "tiles"
        return "torch"

    def actor_worker(self, actor_id: int) -> RolloutWorker:
        """Actor `actor_id`'s battles, exploring as the preset says; no weights until the first
        version arrives (version -1)."""
        cfg = self.cfg
        env = self.batch_env(cfg.actor.envs_per_actor, seed_offset=ACTOR_SEED_STRIDE * actor_id)
        return self._worker(env, cfg.actor.exploration, cfg.run.seed + actor_id, actor_id, version=-1)

    def eval_worker(self) -> RolloutWorker:
        """Greedy test battles, the same for the evaluator process and the one-process trainer."""
        cfg = self.cfg
        env = self.batch_env(min(EVAL_BATTLES, cfg.actor.test_episodes), seed_offset=EVAL_SEED_OFFSET)
        return self._worker(env, "greedy", cfg.run.seed, actor_id=-1, version=-1)

    def offline_curve(
        self, learner: Learner, log, evaluator: RolloutWorker | None = None, held_out: list | None = None
    ):
        """The callback `evaluate(updates)` that scores the greedy policy during pre-training and logs
        an "offline_eval" record; it plays on `evaluator`, or on an evaluator made at its first call.
        With `held_out` dataset episodes (see `offline_episodes`), the record also carries the
        learner's value diagnostics on them."""
        from actors.evaluator import evaluate
        from common.episode import to_training_batch

        worker = evaluator
        diagnostic_batch = to_training_batch(held_out) if held_out else None

        def evaluate_now(updates: int) -> None:
            nonlocal worker
            worker = worker or self.eval_worker()
            worker.set_weights(learner.agent_state_dict(), worker.newest_version + 1)
            result = evaluate(worker, self.cfg.actor.test_episodes)
            diagnostics = learner.value_diagnostics(diagnostic_batch) if diagnostic_batch else {}
            log.log(
                "offline_eval",
                updates=updates,
                episodes=result.episodes,
                **result.log_fields(),
                **diagnostics,
            )

        return evaluate_now

    def trainer_worker(self) -> RolloutWorker:
        """The one-process trainer's batch_size_run battles (PyMARL's parallel runner)."""
        cfg = self.cfg
        env = self.batch_env(cfg.learner.batch_size_run)
        return self._worker(env, cfg.actor.exploration, cfg.run.seed, actor_id=0, version=0)

    def collect_worker(self, battles: int) -> RolloutWorker:
        """Battles for collecting a dataset with a learned policy (epsilon-greedy)."""
        env = self.batch_env(battles)
        return self._worker(env, "epsilon_greedy", self.cfg.env.seed, actor_id=0, version=0)

    # ------------------------------------------------------------------ replay

    def offline_episodes(self, dataset: str) -> tuple[list, list]:
        """(for training, held out): `dataset`'s episodes, less `run.offline_diagnostic_episodes`
        (at most 2% of the file, chosen by run.seed) held out for the pre-training's diagnostics.
        Loaded once per builder."""
        if dataset not in self._loaded:
            from replay.dataset import expected_layout, load_episodes

            episodes = load_episodes(dataset, expected_layout(self.cfg.env), progress=True)
            held = held_out_indices(
                len(episodes), self.cfg.run.offline_diagnostic_episodes, self.cfg.run.seed
            )
            self._loaded[dataset] = (
                [e for i, e in enumerate(episodes) if i not in held],
                [episodes[i] for i in sorted(held)],
            )
        return self._loaded[dataset]

    def local_replay(
        self,
        dataset: str | None,
        *,
        mixing_ratio: float | None = None,
        stream: int = 0,
        hold_out: bool = False,
    ):
        """The in-process replay (no Reverb) of the one-process trainer and pre-training: `dataset`
        in memory (None: no offline data; `hold_out`: less its held-out episodes) and an online FIFO,
        sampled by a generator seeded with (run.seed, stream), so a seed repeats its batches."""
        from replay.dataset import expected_layout, load_episodes
        from replay.local import LocalReplay

        cfg = self.cfg
        layout = expected_layout(cfg.env)
        if dataset and hold_out:
            offline = self.offline_episodes(dataset)[0]
        else:
            offline = load_episodes(dataset, layout, progress=True) if dataset else []
        return LocalReplay(
            offline,
            batch_size=cfg.learner.batch_size,
            mixing_ratio=cfg.replay.mixing_ratio if mixing_ratio is None else mixing_ratio,
            online_capacity=cfg.replay.online_capacity,
            seed=[cfg.run.seed, stream],
            expected=layout,
        )

    def replay_server(self, *, dataset=RUN_DATASET, port: int | None = None, progress: bool = False):
        """The Reverb server with both tables; `dataset` defaults to run.dataset (None: no offline
        data), `port` to replay.port (0: a free one)."""
        from replay.server import start_replay_server

        path = self.cfg.run.dataset if dataset is RUN_DATASET else dataset
        return start_replay_server(self.cfg, dataset=path, port=port, progress=progress)

    def sampler(self, address: str | None = None, *, mixing_ratio: float | None = None, **kwargs):
        """The learner's mixed sampler on `address` (default: the configured replay server)."""
        from replay.sampler import MixedSampler

        return MixedSampler.from_config(self.cfg, address, mixing_ratio=mixing_ratio, **kwargs)

    def offline_sampler(self, address: str | None = None, **kwargs):
        """Offline-only batches, for pre-training."""
        return self.sampler(address, mixing_ratio=1.0, **kwargs)

    def episode_writer(self, address: str | None = None):
        """Writes finished episodes into the online table."""
        from replay.writer import EpisodeWriter

        return EpisodeWriter(address or self.cfg.replay.endpoint)

    # ------------------------------------------------------------------ process services

    def metrics(self, role: str):
        """The role's Prometheus metrics, served on run.metrics_port when that is set."""
        from common.metrics import Metrics

        metrics = Metrics(role)
        if self.cfg.run.metrics_port:
            metrics.serve(self.cfg.run.metrics_port, self.cfg.run.bind_address)
        return metrics

    # ------------------------------------------------------------------ weights

    def token(self) -> str | None:
        """The run's shared token for the weight service (common/auth.py), or None."""
        from common.auth import resolve_token

        return resolve_token(self.cfg.run.auth_token_file)

    def weight_publisher(self):
        from learner.progress_reports import ReportBounds
        from learner.weight_service import WeightPublisher

        cfg = self.cfg
        return WeightPublisher(
            cfg.run.bind_address,
            weight_port(cfg),
            max_message_bytes=cfg.run.grpc_max_message_bytes,
            token=self.token(),
            report_bounds=ReportBounds.for_run(
                cfg.actor.num_actors, cfg.actor.envs_per_actor, numbered=cfg.actor.numbered_ids
            ),
        )

    def weight_subscriber(self, role: str = "actor"):
        from actors.weight_client import WeightSubscriber

        return WeightSubscriber(
            self.cfg.actor.weight_server,
            max_message_bytes=self.cfg.run.grpc_max_message_bytes,
            token=self.token(),
            role=role,
        )

    def progress_reporter(self, actor_id: int):
        from actors.weight_client import ProgressReporter

        return ProgressReporter(self.cfg.actor.weight_server, actor_id, token=self.token())


def held_out_indices(episodes: int, wanted: int, seed: int) -> set[int]:
    """`wanted` episode indices of `episodes`, at most 2% of them, drawn by `seed` (none below 50)."""
    import numpy as np

    count = min(wanted, episodes // 50)
    if count <= 0:
        return set()
    return set(np.random.default_rng([seed, 7]).choice(episodes, size=count, replace=False).tolist())


def weight_port(cfg: Config) -> int:
    """The port of `actor.weight_server` ("host:port"), where the learner serves weights."""
    try:
        return int(cfg.actor.weight_server.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"actor.weight_server: expected host:port, got {cfg.actor.weight_server!r}"
        ) from None
