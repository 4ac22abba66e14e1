"""SMACv2's scenarios on the lite world: SMACv2's sizes, teams and start points drawn per episode
from the battle's seed, its observation options, and the configuration and datasets around them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from common.config import ConfigError, EnvConfig, resolve_config
from common.envs.lite import LiteBatchEnv, LiteStarCraft2Env
from common.envs.maps import MAPS, get_map
from common.envs.policies import make_policy
from common.envs.smacv2 import (
    RACES,
    SCENARIOS,
    CapabilityConfig,
    draw_start_positions,
    draw_teams,
    episode_rng,
    record_mismatch,
    scenario_capability,
)

EXAMPLE_FLAGS = {"obs_own_pos": True, "use_unit_ranges": True, "min_attack_range": 2}  # sc2_gen_*.yaml


def smacv2_sizes(
    race: str, n: int, m: int, *, own_pos=True, fov=0, last_action=False
) -> tuple[int, int, int]:
    """(obs, state, n_actions) written from smacv2/env/starcraft2/starcraft2.py, default SMAC flags:
    `__init__` (n_actions = 4 moves + fov + 2 + n_enemies), `get_obs_move_feats_size` (4),
    `get_obs_enemy_feats_size` (4 + unit_type_bits 3 + 1 health + shield), `get_obs_ally_feats_size`
    (4 + health + shield + capability size = type bits, + n_actions with obs_last_action),
    `get_obs_own_feats_size` (cap size 3 + health + shield, + 2 with conic_fov, + 2 with obs_own_pos),
    `get_state_size` (allies: 4 + shield + 2 fov + 3 type bits; enemies: 3 + shield + 3; last actions)."""
    shield = int(race == "protoss")
    n_actions = 4 + fov + 2 + m
    enemy = 4 + 3 + 1 + shield
    ally = 4 + 1 + shield + 3 + (n_actions if last_action else 0)
    own = 3 + 1 + shield + (2 if fov else 0) + (2 if own_pos else 0)
    obs = 4 + m * enemy + (n - 1) * ally + own
    state = n * (4 + shield + (2 if fov else 0) + 3) + m * (3 + shield + 3) + n * n_actions
    return obs, state, n_actions


def test_the_scenarios_are_smacv2s_fifteen_under_its_names():
    assert sorted(SCENARIOS) == sorted(
        f"{race}_{n}_vs_{m}"
        for race in ("protoss", "terran", "zerg")
        for n, m in ((5, 5), (10, 10), (20, 20), (10, 11), (20, 23))
    )
    assert len(MAPS) == 22  # SMAC's maps stay as they were; the scenarios are a registry of their own


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sizes_equal_smacv2s_for_the_example_config(name):
    s = SCENARIOS[name]
    info = LiteBatchEnv(name, num_envs=1, **EXAMPLE_FLAGS).get_env_info()
    obs, state, n_actions = smacv2_sizes(s.race.name, s.n_units, s.n_enemies)
    assert (info["obs_shape"], info["state_shape"], info["n_actions"]) == (obs, state, n_actions)
    assert (info["n_agents"], info["episode_limit"]) == (s.n_units, 200)


def test_protoss_5_vs_5_has_smacv2s_published_sizes():
    info = LiteStarCraft2Env("protoss_5_vs_5", seed=0, **EXAMPLE_FLAGS).get_env_info()
    assert (info["obs_shape"], info["state_shape"], info["n_actions"]) == (92, 130, 11)


@pytest.mark.parametrize(
    "flags, kwargs",
    [
        ({"obs_own_pos": False}, {"own_pos": False}),
        ({"obs_own_pos": True, "conic_fov": True, "num_fov_actions": 8}, {"fov": 8}),
        ({"obs_own_pos": True, "obs_last_action": True}, {"last_action": True}),
    ],
)
def test_options_change_the_sizes_as_in_smacv2(flags, kwargs):
    info = LiteBatchEnv("zerg_10_vs_11", num_envs=1, **flags).get_env_info()
    assert (info["obs_shape"], info["state_shape"], info["n_actions"]) == smacv2_sizes(
        "zerg", 10, 11, **kwargs
    )


def teams(seed: int, episodes: int = 3) -> list[list[int]]:
    """The unit types of every battle of a batch, episode after episode."""
    env = LiteBatchEnv("terran_10_vs_10", num_envs=4, seed=seed, auto_reset=False)
    drawn = []
    for _ in range(episodes):
        env.reset()
        drawn.append(env.units.type_id.tolist())
    return drawn


def test_the_same_seed_draws_the_same_teams_and_another_seed_others():
    first = teams(seed=3)
    assert first == teams(seed=3)
    assert first != teams(seed=4)
    assert first[0] != first[1]  # and every episode draws anew


def test_battle_b_of_a_batch_is_the_single_battle_seeded_seed_plus_b():
    batch = LiteBatchEnv("protoss_10_vs_11", num_envs=3, seed=10, **EXAMPLE_FLAGS)
    obs = batch.reset()
    single = LiteStarCraft2Env("protoss_10_vs_11", seed=12, **EXAMPLE_FLAGS)
    single.reset()
    np.testing.assert_array_equal(np.stack(single.get_obs()), obs.obs[2])
    np.testing.assert_array_equal(single.get_state(), obs.state[2])


def test_weighted_teams_follow_the_weights_and_never_field_only_exception_units():
    race = RACES["terran"]
    lone = CapabilityConfig.from_smacv2({"n_units": 1, "n_enemies": 1}, race)
    drawn = Counter(draw_teams(lone, episode_rng(0, k))[0][0] for k in range(400))
    assert "medivac" not in drawn  # a lone medivac is a team of exceptions only
    config = scenario_capability(SCENARIOS["terran_20_vs_23"])
    units = Counter(u for k in range(40) for u in draw_teams(config, episode_rng(1, k))[1])
    total = sum(units.values())
    assert abs(units["medivac"] / total - 0.1) < 0.03 and abs(units["marine"] / total - 0.45) < 0.05


def test_the_enemies_are_the_allies_team_extended_or_cut():
    config = scenario_capability(SCENARIOS["zerg_10_vs_11"])
    allies, enemies = draw_teams(config, episode_rng(5, 0))
    assert len(allies) == 10 and len(enemies) == 11 and enemies[:10] == allies


def test_fixed_teams_and_positions_turn_the_randomness_off():
    config = scenario_capability(SCENARIOS["protoss_5_vs_5"], "fixed", "fixed")
    draws = {str(draw_teams(config, episode_rng(s, 0))) for s in range(5)}
    assert draws == {str((["stalker", "stalker", "zealot", "zealot", "colossus"],) * 2)}
    allies, enemies = draw_start_positions(config, episode_rng(0, 0))
    assert (allies == [8, 16]).all() and (enemies == [24, 16]).all()


def test_reflect_mirrors_the_allies_and_surrounded_puts_them_in_the_centre():
    reflect = scenario_capability(SCENARIOS["protoss_10_vs_11"], start_positions="reflect")
    allies, enemies = draw_start_positions(reflect, episode_rng(0, 0))
    assert (allies[:, 0] <= 15).all() and (enemies[10:, 0] >= 16).all()
    np.testing.assert_allclose(enemies[:10], np.c_[32 - allies[:, 0], allies[:, 1]])
    surrounded = scenario_capability(SCENARIOS["protoss_10_vs_11"], start_positions="surrounded")
    allies, enemies = draw_start_positions(surrounded, episode_rng(0, 0))
    assert (allies == 16).all() and len(enemies) == 11
    away = np.abs(enemies - 16)
    assert (np.isclose(away[:, 0], away[:, 1])).all() and (away[:, 0] >= 2 - 1e-9).all()  # on diagonals


def test_observations_carry_the_unit_type_and_own_position():
    env = LiteStarCraft2Env("zerg_5_vs_5", seed=1, **EXAMPLE_FLAGS)
    env.reset()
    lay, engine = env.layout, env._engine
    obs = np.stack(env.get_obs())
    types = obs[:, lay.own_type_offset : lay.own_type_offset + 3]
    np.testing.assert_array_equal(types.argmax(axis=1), engine.units.type_id[0, :5])
    own_pos = obs[:, lay.own_offset + 1 : lay.own_offset + 3]
    np.testing.assert_allclose(own_pos[:, 0] + 1j * own_pos[:, 1], engine.pos[0, :5] / 32, atol=1e-6)


def test_conic_fov_adds_turn_actions_and_turning_shows_in_the_own_features():
    env = LiteStarCraft2Env("protoss_5_vs_5", seed=0, conic_fov=True, num_fov_actions=4)
    env.reset()
    lay = env.layout
    assert env.get_total_actions() == 6 + 4 + 5 and lay.attack_offset == 10
    assert all(env.get_avail_agent_actions(a)[6:10] == [1, 1, 1, 1] for a in range(5))
    env.step([7] * 5)  # fov action 1 of 4: facing north
    fov = np.stack(env.get_obs())[:, lay.own_offset + 2 : lay.own_offset + 4]
    live = np.stack(env.get_obs()).any(axis=1)
    np.testing.assert_allclose(fov[live], [[0.0, 1.0]] * int(live.sum()), atol=1e-6)


def visible_enemies(**flags) -> int:
    env = LiteBatchEnv("protoss_10_vs_10", num_envs=8, seed=0, **flags)
    lay = env.layout
    return int((lay.enemy_block(env.reset().obs)[..., 1] != 0).sum())


def test_fully_observable_shows_more_and_prob_obs_enemy_zero_shows_less():
    usual = visible_enemies()
    assert visible_enemies(fully_observable=True) > usual > visible_enemies(prob_obs_enemy=0.0) > 0


def test_without_the_action_mask_every_living_enemy_can_be_targeted():
    masked = LiteBatchEnv("terran_10_vs_10", num_envs=4, seed=0).reset().avail[..., 6:]
    open_ = LiteBatchEnv("terran_10_vs_10", num_envs=4, seed=0, action_mask=False).reset().avail[..., 6:]
    assert open_.sum() > masked.sum() and (open_ | ~masked).all()


def test_heuristic_policy_plays_every_race_with_available_actions():
    for name in ("protoss_5_vs_5", "terran_5_vs_5", "zerg_5_vs_5"):
        env = LiteBatchEnv(name, num_envs=8, seed=0, **EXAMPLE_FLAGS)
        policy = make_policy("heuristic", env.layout, get_map(name), seed=0)
        obs, ended = env.reset(), 0
        for _ in range(60):
            step = env.step(policy.act(obs.obs, obs.avail))  # the world rejects unavailable actions
            ended += len(step.done_index)
            obs = step.next
        assert np.isfinite(obs.obs).all()


# --- configuration and datasets -----------------------------------------------------------------


def test_the_preset_sets_smacv2s_example_flags_and_smac_kwargs_carry_the_capability_config():
    cfg = resolve_config("protoss_10_vs_10", method="qmix")
    assert (cfg.env.obs_own_pos, cfg.env.use_unit_ranges, cfg.learner.td_lambda) == (True, True, 0.4)
    kwargs = cfg.env.smac_kwargs()
    assert kwargs["capability_config"]["team_gen"]["weights"] == [0.45, 0.45, 0.1]
    assert kwargs["capability_config"]["n_enemies"] == 10
    env = LiteBatchEnv(num_envs=1, **{k: v for k, v in kwargs.items() if k != "seed"})
    assert env.get_env_info()["obs_shape"] == smacv2_sizes("protoss", 10, 10)[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.obs_own_pos=true"], r"env\.obs_own_pos: a SMACv2 setting, and '3m'"),
        (["env.map_name=protoss_5_vs_5", "env.team_gen=uniform"], r"env\.team_gen: must be one of"),
        (["env.map_name=zerg_5_vs_5", "env.prob_obs_enemy=1.5"], r"env\.prob_obs_enemy"),
        (["env.map_name=protoss_5_vs_5", "env.backend=sc2"], r"env\.backend: 'protoss_5_vs_5' is a SMACv2"),
    ],
)
def test_bad_smacv2_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("3m", method="qmix", overrides=overrides)


def episodes_of(env_cfg: EnvConfig, count: int) -> list:
    """`count` episodes of random play on the configured world."""
    from common.envs.factory import make_batch_env
    from common.episode import EpisodeBuilder

    env = make_batch_env(env_cfg, 4)
    builder = EpisodeBuilder(env.num_envs, env.n_agents, env.episode_limit)
    rng, obs, done = np.random.default_rng(0), env.reset(), []
    builder.start(obs.state, obs.obs, obs.avail)
    while len(done) < count:
        actions = np.where(obs.avail, rng.random(obs.avail.shape), -1).argmax(axis=-1)
        step = env.step(actions)
        done += builder.record(actions, step)
        obs = step.next
    return done[:count]


def test_a_dataset_of_one_configuration_is_refused_for_another(tmp_path):
    from replay.dataset import DatasetError, dataset_layout, expected_layout
    from replay.dataset_writer import write_dataset

    made = EnvConfig(map_name="protoss_5_vs_5", obs_own_pos=True, use_unit_ranges=True)
    path = tmp_path / "p5.h5"
    write_dataset(path, episodes_of(made, 2), 200, attrs={"smacv2": json.dumps(made.smacv2_record())})
    dataset_layout(path, expected_layout(made))  # the same configuration is fine
    other = EnvConfig(
        map_name="protoss_5_vs_5", obs_own_pos=True, use_unit_ranges=True, start_positions="fixed"
    )
    with pytest.raises(
        DatasetError, match=r"smacv2\.capability_config\.start_positions\.dist_type: the dataset"
    ):
        dataset_layout(path, expected_layout(other))


def test_record_mismatch_names_the_first_differing_key():
    assert record_mismatch({"a": {"b": 1}}, {"a": {"b": 1.0}}) is None
    assert (
        record_mismatch({"a": [1, 2]}, {"a": [1, 3]})
        == "smacv2.a[1]: the dataset has 2, this configuration 3"
    )


def test_a_snapshot_of_battles_mid_episode_replays_them_exactly():
    from common.snapshot import capture, restore

    def play(env, steps, rng):
        obs, out = env.observation(), []
        for _ in range(steps):
            step = env.step(np.where(obs.avail, rng.random(obs.avail.shape), -1).argmax(axis=-1))
            out.append(step.next.obs)
            obs = step.next
        return np.stack(out)

    env = LiteBatchEnv("terran_5_vs_5", num_envs=4, seed=2, **EXAMPLE_FLAGS)
    env.reset()
    play(env, 70, np.random.default_rng(0))  # some battles have ended and drawn new teams
    saved = capture(env)
    ahead = play(env, 30, np.random.default_rng(1))
    fresh = LiteBatchEnv("terran_5_vs_5", num_envs=4, seed=2, **EXAMPLE_FLAGS)
    restore(fresh, saved)
    np.testing.assert_array_equal(play(fresh, 30, np.random.default_rng(1)), ahead)


def test_a_collected_dataset_records_its_configuration_and_another_is_refused(tmp_path):
    from deploy.recipes import CollectRequest, collect_dataset
    from replay.dataset import DatasetError, dataset_layout, expected_layout
    from replay.dataset_writer import card_path

    cfg = resolve_config(map_name="protoss_5_vs_5", method="ovmse")
    path = tmp_path / "p5.h5"
    collect_dataset(cfg, CollectRequest(out=str(path), episodes=2, num_envs=2), progress=False)
    card = json.loads(card_path(path).read_text())
    assert card["smacv2"] == json.loads(json.dumps(cfg.env.smacv2_record()))
    dataset_layout(path, expected_layout(cfg.env))
    other = dataclasses.replace(cfg.env, start_positions="fixed")
    with pytest.raises(DatasetError, match=r"start_positions\.dist_type: the dataset"):
        dataset_layout(path, expected_layout(other))


def test_fully_observable_episodes_pass_the_checks_online_data_and_datasets_get():
    from common.episode_checks import episode_problem, map_layout

    cfg = EnvConfig(map_name="protoss_10_vs_10", fully_observable=True, **EXAMPLE_FLAGS)
    episodes = episodes_of(cfg, 4)
    assert max(float(np.abs(e.obs).max()) for e in episodes) > 1.5  # beyond a sight range's ratio
    layout = map_layout("protoss_10_vs_10", cfg)
    assert [episode_problem(e, layout) for e in episodes] == [None] * 4


@pytest.mark.parametrize("race", ["protoss", "terran", "zerg"])
@pytest.mark.parametrize("only_positive", [True, False])
def test_the_reward_bounds_hold_for_every_team_the_scenario_can_draw(race, only_positive):
    """The checks' bounds for a scenario contain those of each one-type team on either side (a
    terran team of marines against medivacs loses the most per point of enemy health)."""
    from common.episode_checks import world_bounds

    cfg = EnvConfig(map_name=f"{race}_5_vs_5", reward_only_positive=only_positive)
    spec = get_map(cfg.map_name)
    drawn = world_bounds(spec, cfg)
    for ally in spec.type_order:
        for enemy in spec.type_order:
            team = dataclasses.replace(spec, allies=((ally, 5),), enemies=((enemy, 5),), generated=False)
            fixed = world_bounds(team, cfg)
            for name in ("reward", "episode_return", "features"):
                low, high = getattr(fixed, name)
                assert getattr(drawn, name)[0] <= low and high <= getattr(drawn, name)[1], (ally, enemy, name)
