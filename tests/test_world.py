"""The lite battle world speaks SMAC's API and shapes, and fights like SMAC's battles."""

from __future__ import annotations

import numpy as np
import pytest

from common.envs.layout import SHOOT_RANGE
from common.envs.lite import LiteBatchEnv, LiteStarCraft2Env
from common.envs.maps import MAPS, get_map
from common.envs.policies import make_policy
from common.envs.protocol import BatchEnv, MultiAgentEnv

# SMAC's size table with default flags: agents, enemies, episode limit, n_actions, obs, state.
SMAC_SIZES = {
    "3m": (3, 3, 60, 9, 30, 48),
    "8m": (8, 8, 120, 14, 80, 168),
    "5m_vs_6m": (5, 6, 70, 12, 55, 98),
    "10m_vs_11m": (10, 11, 150, 17, 105, 243),
    "27m_vs_30m": (27, 30, 180, 36, 285, 1170),
    "MMM": (10, 10, 150, 16, 160, 290),
    "MMM2": (10, 12, 180, 18, 176, 322),
    "2s3z": (5, 5, 120, 11, 80, 120),
    "3s5z": (8, 8, 150, 14, 128, 216),
    "3s5z_vs_3s6z": (8, 9, 170, 15, 136, 230),
    "1c3s5z": (9, 9, 180, 15, 162, 270),
    "3s_vs_5z": (3, 5, 250, 11, 48, 68),
    "6h_vs_8z": (6, 8, 150, 14, 78, 140),
    "corridor": (6, 24, 400, 30, 156, 282),
    "bane_vs_bane": (24, 24, 200, 30, 336, 984),
    "2c_vs_64zg": (2, 64, 400, 70, 332, 342),
}
REQUIRED_MAPS = [
    "3m",
    "8m",
    "2s3z",
    "3s5z",
    "5m_vs_6m",
    "6h_vs_8z",
    "10m_vs_11m",
    "27m_vs_30m",
    "MMM2",
    "3s5z_vs_3s6z",
]


def run_policy(env: LiteBatchEnv, policy_name: str, episodes: int, seed: int = 0):
    """Play until `episodes` battles have ended; return per-episode returns and won flags."""
    policy = make_policy(policy_name, env.layout, get_map(env.map_name), seed=seed)
    obs = env.reset()
    running = np.zeros(env.num_envs)
    returns, wins = [], []
    while len(returns) < episodes:
        step = env.step(policy.act(obs.obs, obs.avail))
        running += step.reward
        for b in step.done_index:
            returns.append(running[b])
            wins.append(bool(step.battle_won[b]))
            running[b] = 0.0
        obs = step.next
    return np.array(returns), np.array(wins)


def random_actions(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    noise = np.where(avail, rng.random(avail.shape), -1.0)
    return noise.argmax(axis=-1)


@pytest.mark.parametrize("map_name", sorted(SMAC_SIZES))
def test_env_info_matches_smac_size_table(map_name):
    agents, enemies, limit, n_actions, obs_size, state_size = SMAC_SIZES[map_name]
    env = LiteStarCraft2Env(map_name, seed=0)
    assert env.get_env_info() == {
        "state_shape": state_size,
        "obs_shape": obs_size,
        "n_actions": n_actions,
        "n_agents": agents,
        "episode_limit": limit,
    }
    assert env.n_enemies == enemies
    obs, state = env.reset()
    assert len(obs) == agents and all(o.shape == (obs_size,) and o.dtype == np.float32 for o in obs)
    assert state.shape == (state_size,) and state.dtype == np.float32
    assert np.array(env.get_avail_actions()).shape == (agents, n_actions)


def test_every_required_map_is_supported():
    assert set(REQUIRED_MAPS) <= set(MAPS)
    with pytest.raises(ValueError, match="unknown map 'nope'"):
        LiteStarCraft2Env("nope")


def test_both_classes_satisfy_the_protocols():
    assert isinstance(LiteStarCraft2Env("3m", seed=0), MultiAgentEnv)
    assert isinstance(LiteBatchEnv("3m", num_envs=2), BatchEnv)


def test_smac_api_returns_smac_types():
    env = LiteStarCraft2Env("3m", seed=3)
    env.reset()
    reward, terminated, info = env.step([1, 1, 1])
    assert isinstance(reward, float) and isinstance(terminated, bool)
    assert {"battle_won", "dead_allies", "dead_enemies"} <= set(info)
    assert env.get_avail_agent_actions(0) == env.get_avail_actions()[0]
    assert all(isinstance(a, int) for a in env.get_avail_agent_actions(0))
    assert np.array_equal(env.get_obs_agent(1), env.get_obs()[1])
    assert env.get_total_actions() == 9 and env.seed() == 3
    assert set(env.get_stats()) == {
        "battles_won",
        "battles_game",
        "battles_draw",
        "win_rate",
        "timeouts",
        "restarts",
    }


def test_dead_agents_have_only_no_op_and_see_nothing():
    env = LiteBatchEnv("8m", num_envs=32, seed=1)
    rng = np.random.default_rng(0)
    obs = env.reset()
    seen_dead = 0
    for _ in range(60):
        obs = env.step(random_actions(rng, obs.avail)).next
        dead = env.hp[:, : env.n_agents] <= 0
        seen_dead += int(dead.sum())
        no_op_only = np.zeros(env.n_actions, dtype=bool)
        no_op_only[0] = True
        assert (obs.avail[dead] == no_op_only).all()
        assert not obs.obs[dead].any()
        assert (obs.avail[~dead][:, 0] == 0).all() and (obs.avail[~dead][:, 1] == 1).all()
    assert seen_dead > 0


def test_attack_is_available_exactly_within_shoot_range_of_a_live_enemy():
    env = LiteBatchEnv("3s5z", num_envs=32, seed=2)
    rng = np.random.default_rng(1)
    obs = env.reset()
    n = env.n_agents
    some_attack = False
    for _ in range(40):
        obs = env.step(random_actions(rng, obs.avail)).next
        dist = np.abs(env.pos[:, None, n:] - env.pos[:, :n, None])
        alive = env.hp > 0
        expected = alive[:, :n, None] & alive[:, None, n:] & (dist <= SHOOT_RANGE)
        assert np.array_equal(obs.avail[:, :, 6:], expected)
        some_attack |= bool(expected.any())
    assert some_attack


def test_medivac_attack_slots_heal_allies_but_never_a_medivac():
    env = LiteBatchEnv("MMM2", num_envs=4, seed=0)
    obs = env.reset()
    medivac = int(np.flatnonzero(env.units.healer[: env.n_agents])[0])
    heal_slots = obs.avail[:, medivac, 6:]
    assert heal_slots[:, : env.n_agents].any()
    assert not heal_slots[:, medivac].any()  # itself
    assert not heal_slots[:, env.n_agents :].any()  # slots past the last ally


def test_medivac_heals_a_damaged_ally():
    env = LiteBatchEnv("MMM", num_envs=1, seed=0)
    obs = env.reset()
    medivac = int(np.flatnonzero(env.units.healer[: env.n_agents])[0])
    patient = int(np.flatnonzero(obs.avail[0, medivac, 6:])[0])
    env.hp[0, patient] = 10.0
    actions = np.ones((1, env.n_agents), dtype=np.int64)
    actions[0, medivac] = 6 + patient
    env.step(actions)
    assert env.hp[0, patient] > 10.0


def test_shields_absorb_damage_before_health():
    env = LiteBatchEnv("2s3z", num_envs=1, seed=0)
    env.reset()
    n = env.n_agents
    env.pos[0, n] = env.pos[0, 0] + 3.0  # an enemy stalker within our stalker's reach
    obs = env._observe()
    env._observation = obs
    actions = np.ones((1, n), dtype=np.int64)
    actions[0, 0] = 6  # attack enemy 0
    hp_before, sh_before = env.hp[0, n], env.sh[0, n]
    env.step(actions)
    assert env.sh[0, n] < sh_before
    assert env.hp[0, n] == hp_before


def test_units_never_stack_and_stay_in_the_walkable_area():
    env = LiteBatchEnv("27m_vs_30m", num_envs=8, seed=4)
    rng = np.random.default_rng(2)
    obs = env.reset()
    x0, x1, y0, y1 = env.spec.walkable
    for _ in range(30):
        obs = env.step(random_actions(rng, obs.avail)).next
        alive = env.hp > 0
        assert (env.pos.real >= x0).all() and (env.pos.real <= x1).all()
        assert (env.pos.imag >= y0).all() and (env.pos.imag <= y1).all()
        ratio = np.abs(env.pos[:, None, :] - env.pos[:, :, None]) / env.units.contact
        apart = np.where(alive[:, :, None] & alive[:, None, :], ratio, np.inf)
        idx = np.arange(ratio.shape[1])
        apart[:, idx, idx] = np.inf
        nearest = apart.min(axis=2)[alive]
        # Separation is a few relaxation passes per step: crowds may overlap a little, never stack.
        assert nearest.min() > 0.02
        assert np.median(nearest) > 0.8


def test_enemies_attack_move_toward_the_allied_spawn():
    env = LiteBatchEnv("3m", num_envs=4, seed=0)
    env.reset()
    n = env.n_agents
    start = env.pos[:, n:].real.mean()
    stop = np.ones((4, n), dtype=np.int64)
    for _ in range(3):
        env.step(stop)
    assert env.pos[:, n:].real.mean() < start - 2.0


def test_a_won_episode_returns_exactly_20_on_maps_without_regeneration():
    env = LiteBatchEnv("3m", num_envs=32, seed=0)
    returns, wins = run_policy(env, "heuristic", episodes=64)
    assert wins.any()
    assert np.allclose(returns[wins], 20.0, atol=1e-3)
    assert returns.max() <= 20.0 + 1e-3


@pytest.mark.parametrize("map_name", ["2s3z", "3s5z", "6h_vs_8z"])
def test_returns_stay_within_20_plus_the_regeneration_smac_also_rewards(map_name):
    # SMAC rewards abs(change of enemy health + shield); an enemy regenerating shields or zerg health
    # therefore adds a little. The paper's own 3s5z dataset tops out at 20.16 for this reason.
    env = LiteBatchEnv(map_name, num_envs=32, seed=0)
    returns, wins = run_policy(env, "heuristic", episodes=64)
    assert returns.max() <= 21.0
    assert (returns >= 0).all()


def test_a_win_is_reported_with_battle_won_and_all_enemies_dead():
    env = LiteBatchEnv("3m", num_envs=16, seed=5)
    policy = make_policy("heuristic", env.layout, get_map("3m"))
    obs = env.reset()
    won_any = False
    for _ in range(200):
        step = env.step(policy.act(obs.obs, obs.avail))
        won = step.battle_won
        assert (step.terminated[won]).all()
        assert (step.dead_enemies[won] == env.n_enemies).all()
        won_any |= bool(won.any())
        obs = step.next
    assert won_any
    assert env.get_stats()["battles_won"] > 0


def test_the_time_limit_ends_an_episode_as_a_timeout():
    env = LiteStarCraft2Env("3m", seed=0, continuing_episode=True)
    env._engine.episode_limit = 2
    env.reset()
    env.step([1, 1, 1])
    _, terminated, info = env.step([1, 1, 1])
    assert terminated and info["episode_limit"] is True and info["battle_won"] is False
    assert env.get_stats()["timeouts"] == 1


def test_same_seed_gives_the_same_trajectory_and_another_seed_differs():
    def trajectory(seed):
        env = LiteStarCraft2Env("2s3z", seed=seed)
        rng = np.random.default_rng(7)
        obs, state = env.reset()
        out = [state]
        for _ in range(40):
            avail = np.array(env.get_avail_actions(), dtype=bool)
            reward, terminated, _ = env.step(random_actions(rng, avail))
            out.append(env.get_state())
            out.append(np.array([reward]))
            if terminated:
                env.reset()
        return np.concatenate(out)

    assert np.array_equal(trajectory(11), trajectory(11))
    assert not np.array_equal(trajectory(11), trajectory(12))


def test_a_batch_of_b_battles_equals_b_single_battles_stepped_alone():
    B, seed, steps = 4, 20, 90  # long enough for battles to end and restart
    batch = LiteBatchEnv("3m", num_envs=B, seed=seed)
    singles = [LiteStarCraft2Env("3m", seed=seed + b) for b in range(B)]
    rngs = [np.random.default_rng(b) for b in range(B)]
    obs = batch.reset()
    for b, env in enumerate(singles):
        o, s = env.reset()
        assert np.array_equal(obs.obs[b], np.array(o)) and np.array_equal(obs.state[b], s)
    restarts = 0
    for _ in range(steps):
        actions = np.stack([random_actions(rngs[b], obs.avail[b]) for b in range(B)])
        step = batch.step(actions)
        for b, env in enumerate(singles):
            reward, terminated, info = env.step(actions[b])
            assert np.isclose(step.reward[b], reward) and step.terminated[b] == terminated
            assert step.battle_won[b] == info["battle_won"]
            if terminated:
                k = int(np.flatnonzero(step.done_index == b)[0])
                assert np.array_equal(step.final.obs[k], np.array(env.get_obs()))
                env.reset()
                restarts += 1
            assert np.array_equal(step.next.obs[b], np.array(env.get_obs()))
            assert np.array_equal(step.next.state[b], env.get_state())
        obs = step.next
    assert restarts > 0


def test_random_policy_almost_never_wins_3s5z():
    env = LiteBatchEnv("3s5z", num_envs=64, seed=0)
    _, wins = run_policy(env, "random", episodes=200)
    assert wins.mean() <= 0.01


@pytest.mark.parametrize("map_name", ["2s3z", "3s5z"])
def test_focus_fire_clearly_beats_random(map_name):
    random_returns, random_wins = run_policy(LiteBatchEnv(map_name, num_envs=64, seed=0), "random", 128)
    heur_returns, heur_wins = run_policy(LiteBatchEnv(map_name, num_envs=64, seed=0), "heuristic", 128)
    assert heur_wins.mean() >= random_wins.mean() + 0.1
    assert heur_returns.mean() >= random_returns.mean() + 4.0


def test_5m_vs_6m_stays_hard_for_focus_fire():
    _, wins = run_policy(LiteBatchEnv("5m_vs_6m", num_envs=64, seed=0), "heuristic", 128)
    assert wins.mean() < 0.5


@pytest.mark.parametrize(
    "actions, message",
    [
        (np.array([[1, 1]]), r"shape"),
        (np.array([[1, 1, 99]]), r"agent 2: action 99 is out of range"),
        (np.array([[1, 1, 0]]), r"agent 2: action 0 is not available"),
    ],
)
def test_invalid_actions_are_rejected_naming_the_agent_and_action(actions, message):
    env = LiteBatchEnv("3m", num_envs=1, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(actions)


def test_single_env_rejects_an_unavailable_attack():
    env = LiteStarCraft2Env("3m", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"agent 0: action 6 is not available"):
        env.step([6, 1, 1])  # enemies start out of shooting range


def test_unknown_smac_flags_are_rejected_and_client_only_flags_ignored():
    with pytest.raises(TypeError, match="obs_everything"):
        LiteStarCraft2Env("3m", obs_everything=True)
    LiteStarCraft2Env("3m", replay_dir="", window_size_x=1920, debug=False)


def test_optional_observation_flags_change_sizes_like_smac():
    base = LiteStarCraft2Env("3s5z").get_env_info()
    more = LiteStarCraft2Env(
        "3s5z",
        obs_last_action=True,
        obs_timestep_number=True,
        state_timestep_number=True,
        obs_pathing_grid=True,
        obs_terrain_height=True,
    )
    info = more.get_env_info()
    assert info["obs_shape"] == base["obs_shape"] + 7 * 14 + 1 + 8 + 9
    assert info["state_shape"] == base["state_shape"] + 1
    obs, state = more.reset()
    assert obs[0].shape == (info["obs_shape"],) and state.shape == (info["state_shape"],)
    assert LiteStarCraft2Env("3s5z", obs_instead_of_state=True).get_state_size() == 8 * 128
