"""Learner checkpoints carry a checksum and their identity (map, method, network shape); a checkpoint
that is corrupted, truncated, empty, not a checkpoint, a pickle payload, from another map or of
another shape is refused in one line naming the path and what is wrong, and nothing in it runs."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import pickletools

import pytest
import torch

from common.config.sections import LearnerConfig
from common.errors import CheckpointError
from deploy import cli
from learner.checkpoint import (
    NonFiniteWeights,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from learner.qmix_learner import QMixLearner

SMALL = dict(rnn_hidden_dim=8, mixing_embed_dim=4, hypernet_embed_dim=8, device="cpu")
INFO = {"n_agents": 2, "obs_shape": 5, "state_shape": 7, "n_actions": 4, "episode_limit": 8}


def learner(info: dict = INFO, seed: int = 0, **fields) -> QMixLearner:
    return QMixLearner(info, dataclasses.replace(LearnerConfig(), **{**SMALL, **fields}), seed=seed)


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(learner(seed=1), tmp_path / "learner.pt", extra={"env_steps": 7}, map_name="3m")


def refusal(path, *, map_name=None, info=INFO) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(learner(info), path, map_name=map_name)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_a_checkpoint_records_its_map_method_and_shapes_and_loads_back(saved):
    state, extra, identity = read_checkpoint(saved)
    assert identity == {"map": "3m", "method": "ovmse", "shape": learner().network_shape()}
    assert extra == {"env_steps": 7}
    resumed = learner(seed=5)
    assert load_checkpoint(resumed, saved, map_name="3m") == {"env_steps": 7}
    original = learner(seed=1)
    for a, b in zip(resumed.params, original.params, strict=True):
        assert torch.equal(a, b)


def test_flipped_bytes_are_caught_by_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2  # inside the stored state
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    saved.write_bytes(bytes(data))
    assert "checksum mismatch" in refusal(saved)


def test_one_changed_weight_is_caught_by_the_checksum(saved):
    payload = torch.load(saved, weights_only=True)
    body = payload["body"].clone()
    body[len(body) // 2] ^= 1  # one bit of one number
    payload["body"] = body
    torch.save(payload, saved)
    assert "checksum mismatch" in refusal(saved)


def test_truncated_empty_and_foreign_files_are_refused(saved, tmp_path):
    whole = saved.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert "not a readable checkpoint" in refusal(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty file" in refusal(empty)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    assert "not a readable checkpoint" in refusal(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "not an ovmse learner checkpoint" in refusal(other)
    assert "no such file" in refusal(tmp_path / "missing.pt")


class _WritesAFile:
    """Unpickling this runs open(marker, "w"): proof that a loader executed the payload."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    zipped = tmp_path / "zipped.pt"
    torch.save({"learner": _WritesAFile(str(marker)), "extra": {}}, zipped)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_WritesAFile(str(marker))))
    for path in (zipped, raw):
        assert "refused" in refusal(path)
    assert not marker.exists()
    # The payload is real: read without running it, its pickle calls `open` (REDUCE on that global).
    names = [arg for op, arg, _ in pickletools.genops(raw.read_bytes()) if isinstance(arg, str)]
    ops = [op.name for op, _, _ in pickletools.genops(raw.read_bytes())]
    assert "open" in names and "REDUCE" in ops


def test_a_checkpoint_of_another_map_or_shape_is_refused(saved):
    assert refusal(saved, map_name="2s3z") == f"{saved}: checkpoint is for map 3m, this run is on 2s3z"
    message = refusal(saved, info={**INFO, "n_actions": 5})
    assert "another shape" in message and "n_actions 4 (this learner: 5)" in message


def test_the_method_is_recorded_but_another_method_may_start_from_it(saved):
    other = learner(method="switch_cql")
    load_checkpoint(other, saved, map_name="3m")
    assert read_checkpoint(saved)[2]["method"] == "ovmse"


def test_an_old_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog):
    old = tmp_path / "old.pt"
    torch.save({"learner": learner(seed=2).state_dict(), "extra": {"phase": "offline"}}, old)
    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        assert load_checkpoint(learner(), old, map_name="3m") == {"phase": "offline"}
    assert "without verification" in caplog.text and str(old) in caplog.text
    assert "another shape" in refusal(old, info={**INFO, "obs_shape": 6})


def test_non_finite_weights_are_never_written(tmp_path, saved):
    before = saved.read_bytes()
    broken = learner()
    with torch.no_grad():
        broken.agent.fc1.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="agent.fc1.weight"):
        save_checkpoint(broken, saved)
    assert saved.read_bytes() == before  # the last good checkpoint stays
    assert sorted(os.listdir(saved.parent)) == ["learner.pt"]  # and no temp file


def test_the_cli_prints_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00" * 100)
    code = cli.main(["evaluate", "--map", "3m", "--checkpoint", str(path), "--episodes", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"ovmse evaluate: {path}: " + err.split(f"{path}: ", 1)[1].strip()]
    assert "Traceback" not in err


def tiny_batch():
    import numpy as np

    from common.episode import Episode, to_training_batch

    rows, n, actions = 4, INFO["n_agents"], INFO["n_actions"]
    reward = np.zeros((rows, 1), dtype=np.float32)
    reward[:-1] = 1.0
    episode = Episode(
        state=np.ones((rows, INFO["state_shape"]), dtype=np.float32),
        obs=np.ones((rows, n, INFO["obs_shape"]), dtype=np.float32),
        actions=np.zeros((rows, n, 1), dtype=np.int64),
        avail_actions=np.ones((rows, n, actions), dtype=np.int32),
        reward=reward,
        terminated=np.zeros((rows, 1), dtype=np.uint8),
        filled=np.ones((rows, 1), dtype=np.uint8),
    )
    return to_training_batch([episode, episode])


def test_the_learner_checkpoints_by_time_as_well_as_by_updates(monkeypatch):
    from common.config import resolve_config
    from learner import training
    from learner.training import OnlineUpdates, StartPoint

    cfg = resolve_config(
        map_name="3m",
        overrides=["learner.checkpoint_interval=1000", "learner.checkpoint_interval_s=60"],
    )
    clock = [1000.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    trained = learner(use_offline_value_memory=False)
    saved: list[int] = []
    updates = OnlineUpdates(
        trained, cfg, StartPoint(), publish=lambda: None, checkpoint=lambda: saved.append(trained.updates)
    )
    batch = tiny_batch()
    for _ in range(12):  # four updates a minute: 1,000 updates would take over four hours
        clock[0] += 15.0
        updates.step(batch, env_steps=0, episodes=0)
    assert saved == [4, 8, 12]  # once a minute, not waiting for 1,000 updates
