"""The SC2 back end: a thin adapter over SMAC's StarCraft2Env, checked against a fake SMAC module."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

from common.envs.actions import validate_actions
from common.envs.factory import make_batch_env, make_env
from common.envs.protocol import BatchEnv, MultiAgentEnv
from common.envs.sc2 import SC2StarCraft2Env
from common.envs.serial import SerialBatchEnv
from tests.fakes.fake_smac import install_fake_smac


@pytest.fixture
def fake_smac(monkeypatch: pytest.MonkeyPatch) -> type:
    return install_fake_smac(monkeypatch)


@dataclass
class StandInEnvConfig:
    """The two things the factory reads from the configuration's env section."""

    backend: str = "sc2"
    map_name: str = "3m"
    seed: int | None = 0
    flags: dict = field(default_factory=dict)

    def smac_kwargs(self) -> dict:
        return {"map_name": self.map_name, "seed": self.seed, **self.flags}


# --- construction -----------------------------------------------------------------------------------
def test_constructor_arguments_go_to_smac_unchanged(fake_smac: type) -> None:
    env = SC2StarCraft2Env(map_name="8m", seed=3, reward_sparse=True, episode_limit=7)

    raw = fake_smac.instances[0]
    assert env.unwrapped is raw
    assert (raw.map_name, raw._seed, raw.flags) == ("8m", 3, {"reward_sparse": True})
    assert (env.n_agents, env.n_enemies, env.episode_limit, env.n_actions) == (3, 3, 7, 9)
    assert isinstance(env, MultiAgentEnv)


def test_env_info_is_smacs(fake_smac: type) -> None:
    env = SC2StarCraft2Env(map_name="3m")
    assert env.get_env_info() == {
        "state_shape": 4,
        "obs_shape": 5,
        "n_actions": 9,
        "n_agents": 3,
        "episode_limit": 5,
    }


FORWARDED = [
    ("get_obs", ()),
    ("get_obs_agent", (1,)),
    ("get_obs_size", ()),
    ("get_state", ()),
    ("get_state_size", ()),
    ("get_avail_actions", ()),
    ("get_avail_agent_actions", (2,)),
    ("get_total_actions", ()),
    ("get_env_info", ()),
    ("get_stats", ()),
    ("seed", ()),
    ("close", ()),
]


@pytest.mark.parametrize(("method", "args"), FORWARDED)
def test_each_api_call_is_forwarded_to_smac_and_returns_its_value(
    fake_smac: type, method: str, args: tuple
) -> None:
    env = SC2StarCraft2Env(map_name="3m", seed=5)
    env.reset()
    raw = env.unwrapped
    raw.calls.clear()

    result = getattr(env, method)(*args)

    assert raw.calls == [method]
    expected = getattr(raw, method)(*args)
    if isinstance(expected, list):
        assert len(result) == len(expected)
        for got, want in zip(result, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(result, expected)
    else:
        assert result == expected


def test_reset_returns_smacs_obs_and_state(fake_smac: type) -> None:
    env = SC2StarCraft2Env(map_name="3m", seed=5)
    obs, state = env.reset()
    np.testing.assert_array_equal(np.stack(obs), [[1, 0, i, 5, 1] for i in range(3)])
    np.testing.assert_array_equal(state, [1, 0, 5, 7])


def test_step_forwards_valid_actions_as_ints_and_returns_smacs_result(fake_smac: type) -> None:
    env = SC2StarCraft2Env(map_name="3m")
    env.reset()

    reward, terminated, info = env.step(np.array([1, 7, 8]))

    assert env.unwrapped.received_actions == [[1, 7, 8]]
    assert all(type(a) is int for a in env.unwrapped.received_actions[0])
    assert (reward, terminated) == (16.0, False)
    assert info == {"battle_won": False, "dead_allies": 0, "dead_enemies": 0}


def test_a_failing_first_reset_points_at_the_installation_steps(fake_smac: type, monkeypatch) -> None:
    def no_game(self):
        raise OSError("SC2 executable not found")

    monkeypatch.setattr(fake_smac, "reset", no_game)
    env = SC2StarCraft2Env(map_name="3m")
    with pytest.raises(RuntimeError, match="SC2PATH") as err:
        env.reset()
    assert "SC2 executable not found" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


# --- invalid actions --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ([7, 1, 1], "invalid action for agent 0: action 7 is not available (available: [1, 2, 3, 4, 5, 6])"),
        ([1, 0, 1], "invalid action for agent 1: action 0 is not available"),
        ([1, 1, 9], "invalid action for agent 2: action 9 is out of range [0, 9)"),
        ([1, -1, 1], "invalid action for agent 1: action -1 is out of range"),
        ([1, 1.5, 1], "invalid action for agent 1: action 1.5 is not an integer"),
        ([1, 1], "actions must have shape (3,)"),
        ([[1, 1, 1]], "actions must have shape (3,)"),
    ],
)
def test_invalid_actions_are_rejected_naming_agent_and_action(fake_smac: type, actions, message: str) -> None:
    env = SC2StarCraft2Env(map_name="3m")
    env.reset()
    with pytest.raises(ValueError) as err:
        env.step(actions)
    assert message in str(err.value)
    assert env.unwrapped.received_actions == []


def test_integral_float_actions_are_accepted_as_ints() -> None:
    avail = np.ones((2, 4), dtype=bool)
    out = validate_actions(np.array([1.0, 3.0]), avail, 4)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 3])


def test_batched_action_check_names_the_battle() -> None:
    avail = np.zeros((2, 3, 5), dtype=bool)
    avail[..., 1] = True
    avail[1, 2, 4] = True
    np.testing.assert_array_equal(validate_actions([[1, 1, 1], [1, 1, 4]], avail, 5), [[1, 1, 1], [1, 1, 4]])
    with pytest.raises(
        ValueError, match=r"battle 1, agent 1: action 4 is not available \(available: \[1\]\)"
    ):
        validate_actions([[1, 1, 1], [1, 4, 4]], avail, 5)


def test_availability_mask_must_match_the_action_count() -> None:
    with pytest.raises(ValueError, match="availability mask"):
        validate_actions([1, 1], np.ones((2, 4), dtype=bool), 5)


# --- SMAC missing or wrong --------------------------------------------------------------------------
def test_missing_smac_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smac", None)  # makes `import smac` fail
    with pytest.raises(RuntimeError) as err:
        SC2StarCraft2Env(map_name="3m")
    message = str(err.value)
    for needed in (
        "SC2PATH",
        "~/StarCraftII",
        "4.10",
        "iagreetotheeula",
        "SMAC maps",
        "SMAC_Maps.zip",
        ".[sc2]",
    ):
        assert needed in message


@pytest.mark.parametrize("is_package", [False, True])
def test_pypis_unrelated_smac_is_recognised(monkeypatch: pytest.MonkeyPatch, is_package: bool) -> None:
    automl_smac = types.ModuleType("smac")  # PyPI's AutoML `smac`: no smac.env
    if is_package:
        automl_smac.__path__ = []
    monkeypatch.setitem(sys.modules, "smac", automl_smac)
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    with pytest.raises(RuntimeError) as err:
        SC2StarCraft2Env(map_name="3m")
    message = str(err.value)
    assert "is not SMAC" in message
    assert "AutoML" in message
    assert ".[sc2]" in message


# --- factory ----------------------------------------------------------------------------------------
def test_make_env_with_sc2_backend_builds_an_adapter(fake_smac: type) -> None:
    env = make_env(StandInEnvConfig(map_name="8m", seed=4, flags={"obs_last_action": True}))
    assert isinstance(env, SC2StarCraft2Env)
    raw = env.unwrapped
    assert (raw.map_name, raw._seed, raw.flags) == ("8m", 4, {"obs_last_action": True})


def test_make_batch_env_with_sc2_backend_seeds_each_battle_apart(fake_smac: type) -> None:
    batch = make_batch_env(StandInEnvConfig(seed=10), num_envs=3)
    assert isinstance(batch, SerialBatchEnv)
    assert isinstance(batch, BatchEnv)
    assert batch.num_envs == 3
    assert [raw._seed for raw in fake_smac.instances] == [10, 11, 12]


def test_make_batch_env_without_a_seed_leaves_every_battle_unseeded(fake_smac: type) -> None:
    make_batch_env(StandInEnvConfig(seed=None), num_envs=2)
    assert [raw._seed for raw in fake_smac.instances] == [None, None]


def test_make_batch_env_needs_at_least_one_battle(fake_smac: type) -> None:
    with pytest.raises(ValueError, match="num_envs"):
        make_batch_env(StandInEnvConfig(), num_envs=0)


@pytest.mark.parametrize("build", [make_env, lambda cfg: make_batch_env(cfg, 2)])
def test_unknown_backend_is_rejected_naming_the_setting(build) -> None:
    with pytest.raises(ValueError, match=r"env\.backend 'pysc2'"):
        build(StandInEnvConfig(backend="pysc2"))


def test_lite_backend_calls_the_lite_world_with_smacs_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    lite = types.ModuleType("common.envs.lite")
    lite.LiteStarCraft2Env = lambda **kw: calls.append(("single", kw)) or "single"
    lite.LiteBatchEnv = lambda *args, **kw: calls.append(("batch", args, kw)) or "batch"
    monkeypatch.setitem(sys.modules, "common.envs.lite", lite)
    cfg = StandInEnvConfig(backend="lite", map_name="2s3z", seed=7, flags={"reward_sparse": True})

    assert make_env(cfg) == "single"
    assert make_batch_env(cfg, 4) == "batch"
    assert make_batch_env(StandInEnvConfig(backend="lite", seed=None), 2) == "batch"
    assert calls == [
        ("single", {"map_name": "2s3z", "seed": 7, "reward_sparse": True}),
        ("batch", ("2s3z", 4), {"seed": 7, "reward_sparse": True}),
        ("batch", ("3m", 2), {"seed": None}),
    ]


def test_torch_tensors_are_accepted_as_actions() -> None:
    import torch

    out = validate_actions(torch.tensor([1, 3]), np.ones((2, 4), dtype=bool), 4)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 3])
