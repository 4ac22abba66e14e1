"""The online table takes whatever any client inserts; the learner trains only on items that pass.

A real Reverb server holds good episodes, a malformed item, episodes with NaN rewards, wrong shapes
and impossible actions; sampling never puts a bad one into a batch, counts each one dropped by
reason (the learner's Prometheus metric) and logs the actor id the item carries. The one-process
trainer's replay refuses the same episodes. The learner skips an update whose loss is not finite,
and refuses to publish or checkpoint weights that are not finite."""

from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np
import pytest
import torch

from common.config import resolve_config
from common.episode import Episode, EpisodeMeta
from common.errors import RunHalted
from common.metrics import Metrics
from common.run_log import RunLog
from learner.checkpoint import NonFiniteWeights, read_checkpoint
from learner.process import LearnerParts, run_learner
from learner.qmix_learner import QMixLearner
from learner.training import MAX_SKIPPED_IN_A_ROW, learner_checkpoint
from learner.weight_service import WeightPublisher
from replay.dataset import map_layout
from replay.local import LocalReplay
from replay.sampler import MixedSampler
from replay.server import ReplayServer, TableSpec
from replay.tables import OFFLINE_TABLE, ONLINE_TABLE, encode_episode
from replay.writer import EpisodeWriter

LAYOUT = map_layout("3m")  # the sizes items must have
GOOD_RETURN = 7.0


def episode(length: int = 4, actor: int = 0, version: int = 1) -> Episode:
    n, rows = LAYOUT.n_agents, length + 1
    reward = np.zeros((rows, 1), dtype=np.float32)
    reward[:length] = GOOD_RETURN / length
    return Episode(
        state=np.zeros((rows, LAYOUT.state_size), dtype=np.float32),
        obs=np.zeros((rows, n, LAYOUT.obs_size), dtype=np.float32),
        actions=np.ones((rows, n, 1), dtype=np.int64),
        avail_actions=np.ones((rows, n, LAYOUT.n_actions), dtype=np.int32),
        reward=reward,
        terminated=np.zeros((rows, 1), dtype=np.uint8),
        filled=np.ones((rows, 1), dtype=np.uint8),
        meta=EpisodeMeta(episode_return=GOOD_RETURN, policy_version=version, actor_id=actor),
    )


def nan_reward(actor: int) -> Episode:
    bad = episode(actor=actor, version=666)
    bad.reward[1, 0] = np.nan
    return bad


def wrong_shape(actor: int) -> Episode:
    bad = episode(actor=actor, version=666)
    bad.obs = np.zeros((5, LAYOUT.n_agents, LAYOUT.obs_size + 3), dtype=np.float32)
    return bad


def action_out_of_range(actor: int) -> Episode:
    bad = episode(actor=actor, version=666)
    bad.actions[0, 0, 0] = LAYOUT.n_actions + 5  # would make the learner's gather fail
    return bad


def too_long(actor: int) -> Episode:
    return episode(length=LAYOUT.episode_limit + 1, actor=actor, version=666)  # past the time limit


def unavailable_action(actor: int) -> Episode:
    bad = episode(actor=actor, version=666)
    bad.avail_actions[2, 1, 1] = 0  # agent 1 took action 1 at step 2, which it could not
    return bad


def test_bad_items_in_the_online_table_never_reach_a_batch_and_are_counted(caplog):
    specs = (TableSpec(OFFLINE_TABLE, 100, 1), TableSpec(ONLINE_TABLE, 1000, 1))
    metrics = Metrics("learner")
    with ReplayServer(specs) as server:
        client = server.client()
        with EpisodeWriter(client, ONLINE_TABLE) as writer:
            for i in range(10):
                writer.write(episode(actor=i % 2))
            for _ in range(30):  # the NaN-reward flood that once poisoned every later loss
                writer.write(nan_reward(actor=7))
            writer.write(wrong_shape(actor=8))
            writer.write(action_out_of_range(actor=9))
            writer.write(unavailable_action(actor=9))
        # An item that does not decode at all: three columns instead of eight.
        columns = encode_episode(episode(actor=5, version=666))[:3]
        client.insert(columns, priorities={ONLINE_TABLE: 1.0})

        def dropped(table, reason):
            metrics.replay_items_dropped.labels(table=table, reason=reason).inc()

        sampler = MixedSampler(server.address, 8, 0.0, prefetch_batches=0, expected=LAYOUT, on_drop=dropped)
        with caplog.at_level(logging.WARNING, logger="replay.sampler"), sampler:
            batches = [sampler.sample() for _ in range(10)]
    for batch in batches:
        assert batch.batch_size == 8
        assert bool((batch.policy_version == 1).all()), "a bad item got into a batch"
        assert bool(torch.isfinite(batch.reward).all())
    dropped = sampler.stats.dropped
    assert set(dropped) == {"decode", "shape", "nonfinite", "invalid"}
    assert dropped["nonfinite"] >= 30  # 46 of 47 items are bad: every one is drawn many times

    def counted(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "ovmse_replay_items_dropped_total", {"table": ONLINE_TABLE, "reason": reason}
        )
        return value or 0.0

    assert {r: counted(r) for r in dropped} == {r: float(n) for r, n in dropped.items()}
    assert "from actor 7" in caplog.text and "nonfinite" in caplog.text
    assert "from actor 8" in caplog.text and "from actor 9" in caplog.text
    assert "from an unknown actor" in caplog.text  # the three-column item carries no actor id


def test_the_one_process_replay_refuses_the_same_episodes(caplog):
    replay = LocalReplay([], batch_size=2, mixing_ratio=0.0, online_capacity=100, seed=0, expected=LAYOUT)
    with caplog.at_level(logging.WARNING, logger="replay.local"):
        added = replay.write_all(
            [
                episode(),
                nan_reward(3),
                wrong_shape(3),
                action_out_of_range(4),
                episode(),
                unavailable_action(4),
                too_long(5),
            ]
        )
    assert added == 2 and len(replay.online) == 2
    assert replay.dropped == {"nonfinite": 1, "shape": 2, "invalid": 2}
    assert "from actor 3" in caplog.text and "from actor 4" in caplog.text


# --- non-finite losses and weights in the learner -------------------------------------------------


def small_config(tmp_path, **learner_fields):
    cfg = resolve_config(
        map_name="3m",
        method="ovmse",
        overrides=[
            f"run.run_dir={tmp_path}",
            "run.name=guard",
            "run.dataset=null",
            "replay.mixing_ratio=0",
            "learner.offline_updates=0",
            "learner.batch_size=4",
            "learner.rnn_hidden_dim=8",
            "learner.mixing_embed_dim=4",
            "learner.hypernet_embed_dim=8",
            "learner.device=cpu",
            "learner.checkpoint_interval=2",
        ],
    )
    return dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, **learner_fields))


def env_info() -> dict:
    return {
        "n_agents": LAYOUT.n_agents,
        "obs_shape": LAYOUT.obs_size,
        "state_shape": LAYOUT.state_size,
        "n_actions": LAYOUT.n_actions,
        "episode_limit": LAYOUT.episode_limit,
    }


def batch_of(*episodes: Episode):
    from common.episode import to_training_batch

    return to_training_batch(list(episodes))


def test_an_update_whose_loss_is_not_finite_is_skipped_and_changes_nothing(tmp_path):
    cfg = small_config(tmp_path)
    learner = QMixLearner(env_info(), cfg.learner)
    before = [p.detach().clone() for p in learner.params]
    poisoned = batch_of(episode(), episode())
    poisoned.reward[0, 0, 0] = float("inf")  # past the boundary checks, e.g. an overflow
    metrics = learner.update(poisoned, "online", env_steps=0, episodes_seen=1)
    assert metrics["update_skipped"] == 1.0 and learner.skipped_updates == 1
    assert learner.updates == 0
    assert all(torch.equal(a, b) for a, b in zip(before, learner.params, strict=True))
    assert all(torch.isfinite(s).all() for st in learner.optimizer.state.values() for s in st.values())
    fine = learner.update(batch_of(episode(), episode()), "online", env_steps=0, episodes_seen=2)
    assert fine["update_skipped"] == 0.0 and learner.updates == 1


class Batches:
    """Good batches; after `poison_after` of them, each holds an infinite reward (as an overflow
    past the boundary checks would), so every update's loss is infinite."""

    def __init__(self, poison_after: int = 10**6):
        self.poison_after, self.calls = poison_after, 0

    def sample(self, timeout=None):
        self.calls += 1
        batch = batch_of(*(episode() for _ in range(4)))
        if self.calls > self.poison_after:
            batch.reward[0, 0, 0] = float("inf")
        return batch

    def close(self):
        pass


def learner_parts(cfg, learner, batches: Batches) -> LearnerParts:
    return LearnerParts(
        learner=learner,
        publisher=WeightPublisher(port=0),
        offline_batches=Batches,
        online_batches=lambda: batches,
        metrics=Metrics("learner"),
        log=RunLog(cfg.run.path),
    )


def test_the_learner_refuses_to_publish_non_finite_weights(tmp_path):
    # Checkpoints written before checksums load unverified; this one holds a NaN.
    source = QMixLearner(env_info(), small_config(tmp_path).learner)
    with torch.no_grad():
        source.agent.fc2.bias[0] = float("nan")
    old = tmp_path / "old.pt"
    torch.save({"learner": source.state_dict(), "extra": {}}, old)
    cfg = small_config(tmp_path)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, init_checkpoint=str(old)))
    learner = QMixLearner(env_info(), cfg.learner)
    parts = learner_parts(cfg, learner, Batches())
    with pytest.raises(NonFiniteWeights, match="fc2.bias.*not published"):
        run_learner(cfg, parts, threading.Event())
    assert parts.publisher.version == -1  # nothing ever reached the actors
    refused = parts.metrics.registry.get_sample_value(
        "ovmse_nonfinite_weights_refused_total", {"what": "publish"}
    )
    assert refused == 1
    assert not learner_checkpoint(cfg.run.path).exists()


def test_a_learner_whose_every_loss_is_non_finite_stops_instead_of_spinning(tmp_path):
    cfg = small_config(tmp_path)
    learner = QMixLearner(env_info(), cfg.learner)
    parts = learner_parts(cfg, learner, Batches(poison_after=4))
    stop = threading.Event()
    deadline = threading.Timer(120, stop.set)  # a learner that spins forever ends the test, failed
    deadline.start()
    try:
        with pytest.raises(RunHalted, match=f"{MAX_SKIPPED_IN_A_ROW} updates in a row"):
            run_learner(cfg, parts, stop)
    finally:
        deadline.cancel()
    assert learner.updates == 4 and parts.publisher.version == 5  # the start and four good updates
    skipped = parts.metrics.registry.get_sample_value("ovmse_learner_updates_skipped_total")
    assert skipped == MAX_SKIPPED_IN_A_ROW - 1  # the last one raised before it was counted
    state, extra, _ = read_checkpoint(learner_checkpoint(cfg.run.path))  # the last good one
    assert state["updates"] == 4 and extra["version"] == 5
