"""The particle world (MPE simple_spread, continuous actions): step for step the same observations,
states and per-agent rewards as the real mpe2 package (run in its own environment, .venv-mpe2, built
by `make test`), from the same seeded starts and from loaded ones; episodes are cut at 25 steps with
automatic reset; the reward, push and contact force of hand-built configurations are mpe2's
formulas; bad actions are refused in one line, out-of-range ones clipped as mpe2 clips them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.envs.particles import SpreadBatchEnv, SpreadEnv
from common.envs.protocol import BatchEnv, MultiAgentEnv

ROOT = Path(__file__).resolve().parent.parent
MPE2_PYTHON = ROOT / ".venv-mpe2" / "bin" / "python"
TOOL = ROOT / "tests" / "mpe2" / "trace_tool.py"
ATOL = 1e-5

# name: (trace_tool arguments, n_agents). "clipped" draws actions from [-0.2, 1.2], so about a
# quarter of the components are outside the Box and mpe2 clips them.
TRACES = {
    "clipped": (["--seed", "0", "--envs", "4", "--steps", "60", "--low", "-0.2", "--high", "1.2"], 3),
    "four_agents": (
        ["--seed", "5", "--envs", "2", "--steps", "30", "--agents", "4", "--action-seed", "1"],
        4,
    ),
}


def mpe2_trace(out: Path, *args: str) -> dict[str, np.ndarray]:
    """Run the trace tool in the mpe2 environment (CI always has it: `make test` builds it)."""
    if not MPE2_PYTHON.exists():  # it can be built on any machine, so its absence fails, never skips
        pytest.fail(f"{MPE2_PYTHON} is missing: `make test` builds it (make .venv-mpe2)")
    done = subprocess.run(
        [str(MPE2_PYTHON), str(TOOL), str(out), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("mpe2")
    return {name: mpe2_trace(root / f"{name}.npz", *args) for name, (args, _) in TRACES.items()}


def replay(env: SpreadBatchEnv, trace: dict[str, np.ndarray], steps: int) -> None:
    """Step `env` with the trace's actions and assert it sees, earns and ends what mpe2 did."""
    obs = env.observation()
    for t in range(steps):
        np.testing.assert_allclose(
            obs.obs, trace["obs_before"][:, t], atol=ATOL, err_msg=f"obs before step {t}"
        )
        np.testing.assert_allclose(
            obs.state, trace["state_before"][:, t], atol=ATOL, err_msg=f"state, step {t}"
        )
        step = env.step(trace["actions"][:, t])
        after = step.next.obs.copy()
        after[step.done_index] = step.final.obs
        np.testing.assert_allclose(after, trace["obs_after"][:, t], atol=ATOL, err_msg=f"obs after step {t}")
        np.testing.assert_allclose(
            step.agent_reward, trace["reward"][:, t], atol=ATOL, err_msg=f"rewards, step {t}"
        )
        np.testing.assert_allclose(step.reward, trace["reward"][:, t].sum(axis=1), atol=ATOL)
        np.testing.assert_array_equal(step.episode_limit, trace["truncated"][:, t])
        obs = step.next


@pytest.mark.parametrize("name", TRACES)
def test_seeded_episodes_match_mpe2_step_for_step(traces, name):
    trace = traces[name]
    envs, steps = trace["truncated"].shape
    assert trace["truncated"].sum() >= envs, "the trace should span an automatic reset"
    env = SpreadBatchEnv(envs, seed=int(TRACES[name][0][1]), n_agents=TRACES[name][1])
    env.reset()
    replay(env, trace, steps)
    np.testing.assert_allclose(env.agent_pos, trace["agent_pos_after"][:, -1], atol=ATOL)
    np.testing.assert_allclose(env.agent_vel, trace["agent_vel_after"][:, -1], atol=ATOL)


def test_the_mpe2_trace_exercises_collisions_and_clipping(traces):
    """Otherwise the parity above would not check the contact forces and the clipping."""
    trace = traces["clipped"]
    assert (trace["reward"] != trace["reward"][..., :1]).any(), "no agent collided alone"
    outside = (trace["actions"] < 0) | (trace["actions"] > 1)
    assert outside.mean() > 0.1
    env = SpreadBatchEnv(4, seed=0)
    env.reset()
    for t in range(5):
        env.step(trace["actions"][:, t])
    assert env.get_stats()["clipped_actions"] == int(outside[:, :5].any(axis=-1).sum())


def test_loaded_starts_replay_mpe2(traces):
    trace = traces["clipped"]
    envs = trace["truncated"].shape[0]
    env = SpreadBatchEnv(envs, seed=123)  # other starts than mpe2's seeds: the loaded ones count
    env.reset()
    for _ in range(3):  # loading starts a new episode: its 25 steps count from the load
        env.step(np.full((envs, 3, 5), 0.5, np.float32))
    for b in range(envs):
        env.load_state(b, trace["start_agent_pos"][b, 0], trace["start_landmark_pos"][b, 0])
    replay(env, trace, env.episode_limit)


def test_episodes_are_cut_at_the_limit_with_automatic_reset():
    env = SpreadBatchEnv(3, seed=1)
    first = env.reset()
    zero = np.zeros((3, 3, 5), np.float32)
    for _ in range(24):
        step = env.step(zero)
        assert not step.terminated.any() and step.done_index.size == 0
    before = (env.agent_pos.copy(), env.agent_vel.copy())
    step = env.step(zero)
    assert step.terminated.all() and step.episode_limit.all() and not step.battle_won.any()
    np.testing.assert_array_equal(step.done_index, [0, 1, 2])
    # `final` is the last observation of the ended episodes: positions moved on by the velocity.
    np.testing.assert_allclose(step.final.obs[:, :, 2:4], before[0] + before[1] * 0.1, atol=1e-6)
    # `next` is the start of new episodes: at rest, elsewhere than the first start.
    np.testing.assert_array_equal(step.next.obs[:, :, 0:2], 0.0)
    assert not np.allclose(step.next.obs, first.obs)
    np.testing.assert_array_equal(env.steps, 0)
    assert env.get_stats()["battles_game"] == 3


def test_same_seed_same_starts_and_battle_b_is_seed_plus_b():
    a, b = SpreadBatchEnv(4, seed=7).reset(), SpreadBatchEnv(4, seed=7).reset()
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.allclose(a.obs, SpreadBatchEnv(4, seed=8).reset().obs)
    assert not np.allclose(a.obs[0], a.obs[1])
    np.testing.assert_array_equal(SpreadBatchEnv(1, seed=9).reset().obs[0], a.obs[2])


def at_rest(agents, landmarks, **kwargs) -> SpreadBatchEnv:
    env = SpreadBatchEnv(1, seed=0, n_agents=len(agents), **kwargs)
    env.reset()
    env.load_state(0, np.array(agents, float), np.array(landmarks, float))
    return env


def test_reward_of_a_collision_next_to_covered_landmarks():
    """Agents 0 and 1 overlap (0.2 apart, radii 0.15) and cover landmarks 0 (0.5 away) and 1;
    agent 2 sits on landmark 2. Global -0.5; local -1, -1, 0; weights 0.5 / 0.5."""
    agents, landmarks = [(0, 0), (0.2, 0), (1, 1)], [(0, 0.5), (0.2, 0), (1, 1)]
    # At rest, the first step moves nobody (position moves with the old velocity).
    step = at_rest(agents, landmarks).step(np.zeros((1, 3, 5), np.float32))
    np.testing.assert_allclose(step.agent_reward[0], [-0.75, -0.75, -0.25], atol=1e-6)
    np.testing.assert_allclose(step.reward, [-1.75], atol=1e-6)
    step = at_rest(agents, landmarks, local_ratio=0.0).step(np.zeros((1, 3, 5), np.float32))
    np.testing.assert_allclose(step.agent_reward[0], [-0.5, -0.5, -0.5], atol=1e-6)


def test_push_and_contact_force_move_agents_as_mpe2_integrates():
    env = at_rest([(0, 0), (0.2, 0), (3, 3)], [(0, 0)] * 3)
    push = np.zeros((1, 3, 5), np.float32)
    push[0, 2] = [0.9, 0.0, 1.0, 0.25, 0.75]  # right 1 - left 0, up 0.75 - down 0.25; no_action ignored
    env.step(push)
    np.testing.assert_array_equal(env.agent_pos[0, 2], [3, 3])
    np.testing.assert_allclose(env.agent_vel[0, 2], [0.5, 0.25])  # 5 * (1, 0.5) * dt
    # Overlap 0.1: the softplus penetration is 0.1, force 100 * 0.1 apart, velocity 1.0 after dt.
    np.testing.assert_allclose(env.agent_vel[0, :2], [(-1, 0), (1, 0)], atol=1e-9)
    env.step(np.zeros((1, 3, 5), np.float32))
    np.testing.assert_allclose(env.agent_pos[0, 2], [3.05, 3.025])
    np.testing.assert_allclose(env.agent_vel[0, 2], [0.375, 0.1875])  # damped by 0.25


def test_bad_actions_are_refused_in_one_line_and_out_of_range_ones_clipped():
    env = SpreadBatchEnv(2, seed=0)
    env.reset()
    with pytest.raises(
        ValueError, match=r"shape \[num_envs, n_agents, 5\] = \(2, 3, 5\).*got shape \(2, 3\)"
    ):
        env.step(np.zeros((2, 3), np.int64))
    bad = np.full((2, 3, 5), 0.5, np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN: battle 1, agent 2, component 3"):
        env.step(bad)
    wide = np.random.default_rng(0).uniform(-3, 3, (2, 3, 5)).astype(np.float32)
    clipped = SpreadBatchEnv(2, seed=0)
    clipped.reset()
    np.testing.assert_array_equal(env.step(wide).next.obs, clipped.step(np.clip(wide, 0, 1)).next.obs)
    assert env.get_stats()["clipped_actions"] == 6 and clipped.get_stats()["clipped_actions"] == 0


def test_env_info_describes_a_box_action_space():
    env = SpreadBatchEnv(2)
    info = env.get_env_info()
    assert info == {
        "state_shape": 54,
        "obs_shape": 18,
        "n_actions": 5,
        "n_agents": 3,
        "episode_limit": 25,
        "action_space": "box",
        "action_dim": 5,
        "action_low": 0.0,
        "action_high": 1.0,
    }
    obs = env.reset()
    assert obs.obs.shape == (2, 3, 18) and obs.obs.dtype == np.float32
    np.testing.assert_array_equal(obs.state, obs.obs.reshape(2, 54))
    assert obs.avail.dtype == bool and obs.avail.all() and obs.avail.shape == (2, 3, 5)
    assert isinstance(env, BatchEnv) and env.n_enemies == 0


def test_one_episode_env_speaks_smac_and_replays_battle_zero():
    env = SpreadEnv(seed=4)
    assert isinstance(env, MultiAgentEnv)
    batch = SpreadBatchEnv(1, seed=4)
    obs, state = env.reset()
    np.testing.assert_array_equal(np.stack(obs), batch.reset().obs[0])
    assert state.shape == (env.get_state_size(),) and env.get_avail_agent_actions(1) == [1] * 5
    actions = np.random.default_rng(0).random((25, 3, 5), dtype=np.float32)
    for t in range(25):
        reward, terminated, info = env.step(actions[t])
        assert reward == pytest.approx(float(batch.step(actions[t][None]).reward[0]))
        assert terminated == (t == 24)
    assert info["episode_limit"] and not info["battle_won"]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(actions[0])
    env.reset()


def test_bad_settings_and_states_name_the_field():
    with pytest.raises(ValueError, match="local_ratio"):
        SpreadBatchEnv(1, local_ratio=1.5)
    with pytest.raises(ValueError, match="num_envs"):
        SpreadBatchEnv(0)
    env = SpreadBatchEnv(2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"landmark_pos must be finite with shape \(3, 2\)"):
        env.load_state(0, np.zeros((3, 2)), np.zeros((2, 2)))
