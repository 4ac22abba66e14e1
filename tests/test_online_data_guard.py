"""The online table takes whatever any client inserts; the learner trains only on items that pass.

A real Reverb server holds good episodes, a malformed item, episodes with NaN rewards, wrong shapes,
impossible actions, and extreme but finite values no battle can produce (a reward of 3e38 or 1e15,
observations of 3e38, `filled` 7 with `terminated` 200, `avail_actions` 5, `terminated` on every
step), inserted with a raw Reverb client as an attacker would; sampling never puts a bad one into a
batch, counts each one dropped by reason (the learner's Prometheus metric), logs the actor id the
item carries and deletes it from the table, so a restarted learner never meets it. The one-process
trainer's replay refuses the same episodes. The learner skips an update whose loss is not finite,
takes the batch's episodes to blame out of the replay (and only them: when every episode's own
numbers are bad, the learner is at fault), and refuses to publish or checkpoint weights that are not
finite."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

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
from learner.training import MAX_SKIPPED_IN_A_ROW, OnlineUpdates, StartPoint, learner_checkpoint
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
    """An episode as the world could produce it: every agent alive (stop available, no-op not) and
    stopping, a reward each step, no action or reward on the final observation row."""
    n, rows = LAYOUT.n_agents, length + 1
    reward = np.zeros((rows, 1), dtype=np.float32)
    reward[:length] = GOOD_RETURN / length
    actions = np.ones((rows, n, 1), dtype=np.int64)
    actions[length] = 0
    avail = np.ones((rows, n, LAYOUT.n_actions), dtype=np.int32)
    avail[..., 0] = 0
    return Episode(
        state=np.zeros((rows, LAYOUT.state_size), dtype=np.float32),
        obs=np.zeros((rows, n, LAYOUT.obs_size), dtype=np.float32),
        actions=actions,
        avail_actions=avail,
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


# --- extreme but finite: what no battle can produce ----------------------------------------------


def extreme(kind: str, actor: int = 66) -> Episode:
    """An episode with one of the values an attacker inserted into a live run's online table."""
    bad = episode(actor=actor, version=666)
    if kind == "reward 3e38":
        bad.reward[:-1] = 3e38
        bad.meta.episode_return = 3e38 * (len(bad.reward) - 1)
    elif kind == "reward 1e15":
        bad.reward[:-1] = 1e15
        bad.meta.episode_return = 1e15 * (len(bad.reward) - 1)
    elif kind == "obs 3e38":
        bad.obs[:] = 3e38
    elif kind == "filled 7, terminated 200":
        bad.filled[:] = 7
        bad.terminated[:] = 200
    elif kind == "avail_actions 5":
        bad.avail_actions[:] = 5
    elif kind == "terminated every step":
        bad.terminated[:] = 1
    else:
        raise ValueError(kind)
    return bad


EXTREME = {
    "reward 3e38": "out_of_range",
    "reward 1e15": "out_of_range",
    "obs 3e38": "out_of_range",
    "filled 7, terminated 200": "invalid",
    "avail_actions 5": "invalid",
    "terminated every step": "invalid",
}


def insert_raw(client, episodes, table: str = ONLINE_TABLE) -> None:
    """As an attacker with no credentials would: straight into the table, one item per episode."""
    for e in episodes:
        client.insert(encode_episode(e), priorities={table: 1.0})


def test_extreme_but_finite_items_are_dropped_deleted_and_never_met_again(caplog):
    specs = (TableSpec(OFFLINE_TABLE, 100, 1), TableSpec(ONLINE_TABLE, 1000, 1))
    with ReplayServer(specs) as server:
        client = server.client()
        insert_raw(client, [episode(actor=1) for _ in range(8)])
        # 30 of 38 are bad; each kind from its own actor (60..65), so each is logged
        insert_raw(client, [extreme(kind, 60 + i) for i, kind in enumerate(EXTREME) for _ in range(5)])
        sampler = MixedSampler(server.address, 4, 0.0, prefetch_batches=0, expected=LAYOUT)
        with caplog.at_level(logging.WARNING, logger="replay.sampler"), sampler:
            batches = []
            while server.stats()[ONLINE_TABLE].size > 8:  # until every bad item has been drawn
                batches.append(sampler.sample())
                assert len(batches) < 500, "bad items stay in the table"
        assert sampler.stats.deleted >= 30
        # A restarted learner's sampler: the table holds only the good episodes now.
        with MixedSampler(server.address, 4, 0.0, prefetch_batches=0, expected=LAYOUT) as restarted:
            later = [restarted.sample() for _ in range(20)]
        assert restarted.stats.dropped == {}
    for batch in batches + later:
        assert bool((batch.policy_version == 1).all()), "an extreme item got into a batch"
        assert float(batch.reward.abs().max()) <= 20.0
    assert set(sampler.stats.dropped) == set(EXTREME.values())
    assert sum(sampler.stats.dropped.values()) >= 30
    assert all(f"from actor {60 + i}" in caplog.text for i in range(len(EXTREME)))
    assert "out_of_range: reward" in caplog.text and "out_of_range: obs" in caplog.text
    assert "invalid: filled" in caplog.text and "invalid: terminated" in caplog.text


def test_the_one_process_replay_refuses_the_extreme_items_too():
    replay = LocalReplay([], batch_size=2, mixing_ratio=0.0, online_capacity=100, seed=0, expected=LAYOUT)
    added = replay.write_all([episode(), *(extreme(kind) for kind in EXTREME), episode()])
    assert added == 2 and len(replay.online) == 2
    assert replay.dropped == {"out_of_range": 3, "invalid": 3}


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
            while server.stats()[ONLINE_TABLE].size > 10:  # until every bad item has been drawn
                batches.append(sampler.sample())
                assert len(batches) < 500, "bad items stay in the table"
    for batch in batches:
        assert batch.batch_size == 8
        assert bool((batch.policy_version == 1).all()), "a bad item got into a batch"
        assert bool(torch.isfinite(batch.reward).all())
    dropped = sampler.stats.dropped
    assert set(dropped) == {"decode", "shape", "nonfinite", "invalid"}
    assert dropped["nonfinite"] >= 30  # each of the 30 is drawn once, then deleted

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


# --- a non-finite update: the episodes to blame leave the replay ---------------------------------


def dropped_metric(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "ovmse_replay_items_dropped_total", {"table": ONLINE_TABLE, "reason": reason}
    )
    return value or 0.0


def first_batch_holding_the_poison(sampler) -> object:
    for _ in range(500):
        batch = sampler.sample()
        if bool((batch.policy_version == 666).any()):
            return batch
    raise AssertionError("the poisoned episode never came up")


def skipped_update(tmp_path, learner=None, poison=True, layout=LAYOUT):
    """One online step on a batch from a real table of 6 good episodes (and one with a reward of 3e38,
    if `poison`), sampled without the map's bounds so that it can reach a batch, with the sampler's
    `discard` wired as the learner process wires it. Returns (step result, OnlineUpdates, the
    sampler, the batch, episodes left in the table, the learner's metrics)."""
    cfg = small_config(tmp_path)
    learner = learner or QMixLearner(env_info(), cfg.learner)
    metrics = Metrics("learner")

    def dropped(table, reason):
        metrics.replay_items_dropped.labels(table=table, reason=reason).inc()

    specs = (TableSpec(OFFLINE_TABLE, 100, 1), TableSpec(ONLINE_TABLE, 1000, 1))
    with ReplayServer(specs) as server:
        insert_raw(server.client(), [episode(actor=1) for _ in range(6)] + [extreme("reward 3e38")] * poison)
        with MixedSampler(server.address, 4, 0.0, prefetch_batches=0, on_drop=dropped) as sampler:
            updates = OnlineUpdates(learner, cfg, StartPoint(), publish=lambda: None, discard=sampler.discard)
            updates.expected = layout
            batch = first_batch_holding_the_poison(sampler) if poison else sampler.sample()
            result = updates.step(batch, env_steps=0, episodes=1)
            left = server.stats()[ONLINE_TABLE].size
    return result, updates, sampler, batch, left, metrics


def test_an_update_gone_non_finite_takes_the_episode_the_check_refuses_out_of_the_table(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result, updates, sampler, batch, left, metrics = skipped_update(tmp_path)
    poisoned = int((batch.policy_version == 666).sum())
    assert result["update_skipped"] == 1.0 and updates.skipped == 1
    assert left == 6 and updates.blamed == poisoned  # the poison is gone; the good episodes stay
    assert sampler.stats.dropped == {"out_of_range": poisoned}
    assert dropped_metric(metrics, "out_of_range") == poisoned
    assert updates._skipped_in_a_row == 0  # the data's fault, now gone: not a stuck learner
    assert "taken out of the replay" in caplog.text and "out_of_range" in caplog.text


def test_an_episode_the_check_cannot_refuse_but_whose_own_loss_is_not_finite_goes_too(tmp_path):
    # Without the map's bounds (a world the check knows nothing of), a reward of 3e38 passes the
    # check; its own value diagnostics overflow, and it is taken out as non_finite_loss.
    unbounded = dataclasses.replace(LAYOUT, bounds=None)
    result, updates, sampler, batch, left, metrics = skipped_update(tmp_path, layout=unbounded)
    poisoned = int((batch.policy_version == 666).sum())
    assert result["update_skipped"] == 1.0 and left == 6
    assert sampler.stats.dropped == {"non_finite_loss": poisoned}
    assert dropped_metric(metrics, "non_finite_loss") == poisoned


def test_when_every_episodes_numbers_are_bad_the_learner_is_at_fault_and_nothing_is_taken_out(tmp_path):
    learner = QMixLearner(env_info(), small_config(tmp_path).learner)
    with torch.no_grad():
        for weights in learner.mixer.parameters():  # every Q_tot, so every episode's numbers, NaN
            weights.fill_(float("nan"))
    result, updates, sampler, _, left, _ = skipped_update(tmp_path, learner=learner, poison=False)
    assert result["update_skipped"] == 1.0 and left == 6
    assert sampler.stats.dropped == {} and updates.blamed == 0
    assert updates._skipped_in_a_row == 1  # counts toward MAX_SKIPPED_IN_A_ROW


def test_the_one_process_replay_takes_out_the_episodes_to_blame_too(tmp_path):
    cfg = small_config(tmp_path)
    learner = QMixLearner(env_info(), cfg.learner)
    # A replay that checks no map (as one built before the map was known): the poison gets in.
    replay = LocalReplay([], batch_size=4, mixing_ratio=0.0, online_capacity=100, seed=0)
    replay.write_all([episode() for _ in range(3)] + [extreme("reward 3e38")])
    updates = OnlineUpdates(learner, cfg, StartPoint(), publish=lambda: None, discard=replay.discard)
    result = updates.step(replay.sample(), env_steps=0, episodes=1)  # all four: the poison with them
    assert result["update_skipped"] == 1.0
    assert len(replay.online) == 3 and all(e.meta.policy_version == 1 for e in replay.online)
    assert replay.dropped == {"out_of_range": 1}
    replay.write(episode())
    assert updates.step(replay.sample(), env_steps=0, episodes=2)["update_skipped"] == 0.0


def test_a_batch_keeps_naming_its_items_when_moved():
    batch = batch_of(episode(), episode())
    batch.items = (("online", 11), ("online", 12))
    assert batch.to("cpu").items == batch.items


def test_the_learner_process_deletes_what_poisoned_its_updates_and_goes_on(tmp_path):
    cfg = small_config(tmp_path)
    learner = QMixLearner(env_info(), cfg.learner)
    specs = (TableSpec(OFFLINE_TABLE, 100, 1), TableSpec(ONLINE_TABLE, 1000, 1))
    stop = threading.Event()
    with ReplayServer(specs) as server:
        insert_raw(server.client(), [episode(actor=1) for _ in range(12)] + [extreme("reward 3e38")] * 4)

        def batches():  # a sampler that checks no bounds lets the poison reach the updates
            return MixedSampler(server.address, 4, 0.0, prefetch_batches=0, on_drop=dropped)

        parts = learner_parts(cfg, learner, Batches())
        parts.online_batches = batches

        def dropped(table, reason):
            parts.metrics.replay_items_dropped.labels(table=table, reason=reason).inc()

        def stop_when_clean():
            while not stop.is_set():
                if server.stats()[ONLINE_TABLE].size == 12 and learner.updates >= 5:
                    stop.set()
                time.sleep(0.05)

        watcher = threading.Thread(target=stop_when_clean, daemon=True)
        watcher.start()
        deadline = threading.Timer(120, stop.set)  # a learner that never cleans up ends the test, failed
        deadline.start()
        try:
            run_learner(cfg, parts, stop)
        finally:
            deadline.cancel()
            stop.set()
        left = server.stats()[ONLINE_TABLE].size
    assert left == 12 and learner.updates >= 5, "the poison is still in the table"
    assert dropped_metric(parts.metrics, "out_of_range") >= 4
    lines = (cfg.run.path / "metrics.jsonl").read_text().splitlines()
    drops = [r for r in map(json.loads, lines) if r["kind"] == "dropped"]
    assert drops and drops[-1]["out_of_range"] >= 4
