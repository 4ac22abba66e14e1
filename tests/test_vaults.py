"""Flashbax vaults, OG-MARL's dataset format: a vault written by the real flashbax library (in its own
environment, .venv-flashbax, built by `make test`) is read, validated, inspected, converted and
pre-trained on wherever a dataset file is; HDF5 -> vault -> HDF5 gives back the same file; flashbax
reads the vaults we write; a malformed vault is refused in one line naming the leaf."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from common.episode import Episode, EpisodeMeta
from deploy.replay_commands import dataset_convert, dataset_inspect, dataset_validate
from replay.convert import convert
from replay.dataset import DatasetError, file_fingerprint, map_layout, read_episodes, validate_dataset
from replay.dataset_writer import write_dataset

ROOT = Path(__file__).resolve().parent.parent
FLASHBAX_PYTHON = ROOT / ".venv-flashbax" / "bin" / "python"
TOOL = ROOT / "tests" / "flashbax" / "vault_tool.py"
MAP = "3m"
LAYOUT = map_layout(MAP)
# Four OG-MARL-style episodes: lost, won, cut by the time limit (flagged terminal, as OG-MARL's SMAC
# recorder does), lost. (steps, team reward per step)
EPISODES = [(5, 0.5), (8, 2.5), (LAYOUT.episode_limit, 0.1), (3, 1.0)]  # returns a win can reach


def flashbax(*args: str) -> str:
    """Run the flashbax tool in its own environment (CI always has it: `make test` builds it)."""
    if not FLASHBAX_PYTHON.exists():  # it can be built on any machine, so its absence fails, never skips
        pytest.fail(f"{FLASHBAX_PYTHON} is missing: `make test` builds it (make .venv-flashbax)")
    done = subprocess.run(
        [str(FLASHBAX_PYTHON), str(TOOL), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def og_marl_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Transitions as OG-MARL's SMAC recorder stores them: per-agent rewards and flags (float32),
    legal actions as float32, every end flagged in `terminals`, `truncations` never set. What SMAC
    can produce: every agent alive (stop always legal, the no-op never), features in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n, a = LAYOUT.n_agents, LAYOUT.n_actions
    steps = sum(length for length, _ in EPISODES)
    legals = (rng.random((steps, n, a)) < 0.5).astype(np.float32)
    actions = rng.integers(0, a, (steps, n)).astype(np.int32)
    actions[actions == 0] = 1  # the no-op is a dead agent's; these are alive
    legals[..., 0], legals[..., 1] = 0.0, 1.0
    np.put_along_axis(legals, actions[..., None].astype(np.int64), 1.0, axis=-1)
    rewards = np.concatenate([np.full(length, r, np.float32) for length, r in EPISODES])
    terminals = np.zeros((steps, n), np.float32)
    terminals[np.cumsum([length for length, _ in EPISODES]) - 1] = 1.0
    return {
        "observations": rng.uniform(-1, 1, size=(steps, n, LAYOUT.obs_size)).astype(np.float32),
        "actions": actions,
        "rewards": np.repeat(rewards[:, None], n, axis=1),
        "terminals": terminals,
        "truncations": np.zeros((steps, n), np.float32),
        "infos.legals": legals,
        "infos.state": rng.uniform(-1, 1, size=(steps, LAYOUT.state_size)).astype(np.float32),
    }


def broken(arrays: dict, **changes) -> dict:
    out = {key: value.copy() for key, value in arrays.items()}
    for key, change in changes.items():
        change(out[key.replace("__", ".")])
    return out


@pytest.fixture(scope="module")
def vaults(tmp_path_factory):
    """Vaults written by flashbax: 3m.vlt/Good (valid) and some with bad data."""
    root = tmp_path_factory.mktemp("vaults")
    good = og_marl_arrays()

    def nan_obs(obs):
        obs[7, 1, 2] = np.nan  # episode 1 (steps 5..12), its step 2

    def no_legal(legals):
        legals[2, 2] = 0.0  # episode 0, step 2, agent 2

    def split_reward(rewards):
        rewards[3, 1] += 1.0  # agent 1's reward differs from its team's

    def endless(terminals):
        terminals[5:-1] = 0.0  # episode 1 runs on to the last step: 71 steps, 3m allows 60

    sets = {
        "Good": good,
        "NaN": broken(good, observations=nan_obs),
        "NoLegal": broken(good, infos__legals=no_legal),
        "Endless": broken(good, terminals=endless),
        "SplitReward": broken(good, rewards=split_reward),
    }
    pairs = []
    for uid, arrays in sets.items():
        path = root / f"{uid}.npz"
        np.savez(path, **arrays)
        pairs.append(f"{uid}={path}")
    flashbax("write", str(root), "3m.vlt", *pairs)
    return root / "3m.vlt", good


def test_a_flashbax_vault_reads_as_its_episodes(vaults):
    vlt, arrays = vaults
    episodes = read_episodes(vlt / "Good", LAYOUT)
    assert [e.length for e in episodes] == [length for length, _ in EPISODES]
    start = 0
    for episode, (length, reward) in zip(episodes, EPISODES, strict=True):
        rows = slice(start, start + length)
        np.testing.assert_array_equal(episode.obs[:length], arrays["observations"][rows])
        np.testing.assert_array_equal(episode.state[:length], arrays["infos.state"][rows])
        np.testing.assert_array_equal(episode.actions[:length, :, 0], arrays["actions"][rows])
        np.testing.assert_array_equal(episode.avail_actions[:length], arrays["infos.legals"][rows])
        np.testing.assert_allclose(episode.reward[:length, 0], reward)
        # No final observation in a vault: the last one seen stands in; the final row acts on nothing.
        np.testing.assert_array_equal(episode.obs[length], arrays["observations"][start + length - 1])
        assert episode.actions[length].sum() == 0 and episode.reward[length] == 0
        start += length
    # OG-MARL flags the time limit as a terminal; PyMARL's `terminated` is only for true ends.
    assert [bool(e.terminated.any()) for e in episodes] == [True, True, False, True]
    assert [e.meta.battle_won for e in episodes] == [False, True, False, False]


def args(command, path, **extra):
    return argparse.Namespace(command=f"dataset {command}", subcommand=command, path=str(path), **extra)


def test_validate_and_inspect_accept_a_vault(vaults, capsys):
    vlt, _ = vaults
    assert dataset_validate(args("validate", vlt / "Good", map=MAP)) == 0
    out = capsys.readouterr().out
    assert "valid for map 3m: 4 episodes, 76 steps, episode_limit 60" in out
    assert dataset_inspect(args("inspect", vlt / "Good")) == 0
    out = capsys.readouterr().out
    assert "episodes   4" in out and "win rate   0.250 (inferred from returns)" in out
    assert (vlt.parent / "3m_Good.vault.returns.png").stat().st_size > 0  # beside the vault, not inside


def test_a_vault_directory_with_several_datasets_asks_for_one(vaults):
    vlt, _ = vaults
    with pytest.raises(
        DatasetError, match=r"holds 5 vaults \(Endless, Good, NaN, NoLegal, SplitReward\); name one"
    ):
        validate_dataset(vlt)


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("NaN", "episode 1: observations: not finite at row 2"),
        ("SplitReward", "rewards: agents' rewards differ at step 3; QMIX needs one team reward"),
        (
            "NoLegal",
            "episode 0: actions: agent 2 took action 2 at step 2, which avail_actions marks unavailable",
        ),
        (
            "Endless",
            "episode 1: terminals: 71 steps without an end flag (from step 5), longer than the episode "
            "limit 60",
        ),
    ],
)
def test_bad_data_in_a_flashbax_vault_is_refused_naming_the_leaf(vaults, capsys, uid, expected):
    vlt, _ = vaults
    assert dataset_validate(args("validate", vlt / uid, map=MAP)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(vlt / uid) in err and expected in err


def copy_vault(vaults, tmp_path) -> Path:
    vlt, _ = vaults
    copy = tmp_path / "3m.vlt" / "Good"
    shutil.copytree(vlt / "Good", copy)
    return copy


def test_a_vault_missing_a_leaf_is_refused_naming_it(vaults, tmp_path, capsys):
    copy = copy_vault(vaults, tmp_path)
    meta = json.loads((copy / "metadata.json").read_text())
    del meta["structure_dtype"]["infos"]["state"]
    (copy / "metadata.json").write_text(json.dumps(meta))
    assert dataset_validate(args("validate", copy)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{copy}: infos.state: missing from metadata.json" in err


def test_a_vault_with_garbled_storage_is_refused_in_one_line(vaults, tmp_path, capsys):
    copy = copy_vault(vaults, tmp_path)
    for data in (copy / "d").iterdir():
        data.write_bytes(b"\x00garbage" * 8)
    assert dataset_validate(args("validate", copy)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(copy) in err
    assert any(f": {leaf}: cannot" in err for leaf in ("observations", "vault_index", "actions"))
    assert "tensorstore_spec" not in err  # TensorStore's spec dump is left out


def test_a_vault_for_another_map_is_refused_naming_the_leaf(vaults, capsys):
    vlt, _ = vaults
    assert dataset_validate(args("validate", vlt / "Good", map="8m")) == 2
    assert "observations: agents is 3, but map 8m has 8" in capsys.readouterr().err


def test_a_flashbax_vault_converts_to_hdf5_with_the_same_episodes(vaults, tmp_path, capsys):
    vlt, _ = vaults
    out = tmp_path / "3m_good.h5"
    convert_args = argparse.Namespace(
        command="dataset convert", path=str(vlt / "Good"), out=str(out), map=MAP
    )
    assert dataset_convert(convert_args) == 0
    assert f"-> {out}: 4 episodes" in capsys.readouterr().out
    from_vault, from_file = read_episodes(vlt / "Good", LAYOUT), read_episodes(out, LAYOUT)
    for a, b in zip(from_vault, from_file, strict=True):
        for key in ("state", "obs", "actions", "avail_actions", "reward", "terminated", "filled"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert a.meta.battle_won == b.meta.battle_won


def test_converting_another_tools_vault_needs_its_map(vaults, tmp_path, capsys):
    vlt, _ = vaults
    out = tmp_path / "x.h5"
    convert_args = argparse.Namespace(
        command="dataset convert", path=str(vlt / "Good"), out=str(out), map=None
    )
    assert dataset_convert(convert_args) == 2
    assert "map: needed to convert a vault that ovmse did not write" in capsys.readouterr().err
    assert not out.exists()


def test_unfinished_steps_at_the_end_of_a_vault_are_left_out(vaults, tmp_path, caplog):
    import tensorstore as ts

    copy = copy_vault(vaults, tmp_path)
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{copy}", "path": "vault_index"}}
    ts.open(spec).result().write(np.array([74], np.int32)).result()  # the last episode: 1 of its 3 steps
    assert [e.length for e in read_episodes(copy, LAYOUT)] == [5, 8, 60]
    assert "the last 1 steps end with no terminal or truncation flag" in caplog.text


def test_a_flashbax_vault_pretrains(vaults, tmp_path):
    from deploy.cli import main

    vlt, _ = vaults
    code = main([
        "pretrain", "--map", MAP, "--dataset", str(vlt / "Good"),
        "--set", f"run.run_dir={tmp_path}", "--set", "run.name=from_vault",
        "--set", "learner.offline_updates=2", "--set", "learner.batch_size=4",
        "--set", "learner.behaviour_pretrain_updates=0", "--set", "run.offline_eval_interval=0",
        "--set", "actor.test_episodes=2", "--set", "actor.final_test_episodes=2",
    ])  # fmt: skip
    assert code == 0
    assert (tmp_path / "from_vault" / "checkpoints" / "offline.pt").stat().st_size > 0


# --- our files to vaults and back -------------------------------------------------------------


def synthetic_file(path: Path) -> Path:
    """A file in our layout with probs, a won episode, a time-limit end and our attributes."""
    rng = np.random.default_rng(3)
    n, a, episodes, probs = LAYOUT.n_agents, LAYOUT.n_actions, [], []
    for i, length in enumerate((4, 9, LAYOUT.episode_limit)):
        avail = np.ones((length + 1, n, a), np.int32)
        avail[:, :, 1] = rng.integers(0, 2, (length + 1, n))
        actions = np.zeros((length + 1, n, 1), np.int64)
        actions[:length, :, 0] = rng.choice([0, 2, 3], size=(length, n))
        reward = np.zeros((length + 1, 1), np.float32)
        reward[:length] = rng.random((length, 1)).astype(np.float32)
        terminated = np.zeros((length + 1, 1), np.uint8)
        won = i == 1
        if length < LAYOUT.episode_limit:
            terminated[length - 1] = 1
        if won:
            reward[length - 1] += 20.0
        p = np.zeros((length + 1, n, a), np.float32)
        p[:length] = rng.random((length, n, a))
        probs.append(p)
        episodes.append(
            Episode(
                state=rng.normal(size=(length + 1, LAYOUT.state_size)).astype(np.float32),
                obs=rng.normal(size=(length + 1, n, LAYOUT.obs_size)).astype(np.float32),
                actions=actions,
                avail_actions=avail,
                reward=reward,
                terminated=terminated,
                filled=np.ones((length + 1, 1), np.uint8),
                meta=EpisodeMeta(battle_won=won),
            )
        )
    attrs = {"map_name": MAP, "policy": "heuristic", "epsilon": 0.2, "seed": 7}
    return write_dataset(path, episodes, LAYOUT.episode_limit, probs=probs, attrs=attrs)


def assert_same_file(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for key in fa:
            assert fa[key].dtype == fb[key].dtype, key
            np.testing.assert_array_equal(fa[key][()], fb[key][()], err_msg=key)
        assert sorted(fa.attrs) == sorted(fb.attrs)
        for name in fa.attrs:
            np.testing.assert_array_equal(fa.attrs[name], fb.attrs[name], err_msg=name)


def test_hdf5_to_vault_to_hdf5_is_identical(tmp_path):
    original = synthetic_file(tmp_path / "3m_medium.h5")
    vault, episodes = convert(original, tmp_path / "3m.vlt")
    assert (vault, episodes) == (tmp_path / "3m.vlt" / "3m_medium", 3)
    back, _ = convert(vault, tmp_path / "back.h5")
    assert_same_file(original, back)
    assert not [p for p in (tmp_path / "3m.vlt").iterdir() if p.name.startswith(".")]  # no temp left


def test_flashbax_reads_the_vaults_we_write(tmp_path):
    original = synthetic_file(tmp_path / "3m_medium.h5")
    convert(original, tmp_path / "3m.vlt" / "Medium")
    flashbax("read", str(tmp_path), "3m.vlt", "Medium", str(tmp_path / "read.npz"))
    with np.load(tmp_path / "read.npz") as read, h5py.File(original, "r") as f:
        lengths = f["filled"][()][..., 0].sum(axis=1) - 1
        steps = int(lengths.sum())
        assert read["observations"].shape == (steps, LAYOUT.n_agents, LAYOUT.obs_size)
        taken = np.concatenate([f["obs"][i, :length] for i, length in enumerate(lengths)])
        np.testing.assert_array_equal(read["observations"], taken)
        ends = np.cumsum(lengths) - 1
        assert read["terminals"][ends, 0].tolist() == [1.0, 1.0, 0.0]  # the third hit the time limit
        assert read["truncations"][ends, 0].tolist() == [0.0, 0.0, 1.0]
        assert read["rewards"].shape == (steps, LAYOUT.n_agents)


def test_converting_onto_an_existing_vault_is_refused(tmp_path, capsys):
    original = synthetic_file(tmp_path / "a.h5")
    convert(original, tmp_path / "a.vlt" / "x")
    namespace = argparse.Namespace(
        command="dataset convert", path=str(original), out=str(tmp_path / "a.vlt" / "x")
    )
    assert dataset_convert(namespace) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_bad_file_leaves_no_vault_behind(tmp_path):
    original = synthetic_file(tmp_path / "a.h5")
    with h5py.File(original, "r+") as f:
        f["obs"][1, 2, 0, 0] = np.inf
    with pytest.raises(DatasetError, match="episode 1: obs: not finite at row 2"):
        convert(original, tmp_path / "a.vlt")
    assert list((tmp_path / "a.vlt").iterdir()) == []


def test_the_fingerprint_of_a_vault_follows_its_contents(tmp_path):
    original = synthetic_file(tmp_path / "a.h5")
    vault, _ = convert(original, tmp_path / "a.vlt")
    before = file_fingerprint(vault)
    assert file_fingerprint(vault) == before
    meta = vault / "metadata.json"
    meta.write_text(meta.read_text() + " ")
    assert file_fingerprint(vault) != before


def test_the_replay_server_loads_a_vault_as_run_dataset(vaults):
    from common.config import resolve_config
    from replay.server import start_replay_server
    from replay.tables import OFFLINE_TABLE

    vlt, _ = vaults
    cfg = resolve_config(
        map_name=MAP,
        overrides=["replay.port=0", "learner.batch_size=4", f"run.dataset={vlt / 'Good'}"],
    )
    server = start_replay_server(cfg)
    try:
        assert server.loaded_offline and server.stats()[OFFLINE_TABLE].size == len(EPISODES)
    finally:
        server.stop()
