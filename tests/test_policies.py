"""Scripted policies read only observations and availability masks, laid out as SMAC lays them out."""

from __future__ import annotations

import numpy as np
import pytest

from common.envs.layout import ObsLayout
from common.envs.maps import get_map
from common.envs.policies import (
    FocusFirePolicy,
    RandomPolicy,
    advance_direction,
    healer_type_id,
    make_policy,
)

NO_OP, STOP, N, S, E, W = range(6)
ATTACK = 6


def assert_available(actions: np.ndarray, avail: np.ndarray) -> None:
    assert actions.dtype == np.int64
    assert actions.shape == avail.shape[:-1]
    assert np.take_along_axis(avail, actions[..., None], axis=-1).all()


# --- random -----------------------------------------------------------------------------------------
def test_random_policy_picks_only_available_actions_and_every_one_of_them() -> None:
    avail = np.array(
        [
            [0, 1, 1, 0, 0, 0, 1, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0, 0],  # dead: only no-op
            [0, 1, 1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    batch = np.broadcast_to(avail, (500, 3, 9))
    actions = RandomPolicy(seed=0).act(np.zeros((500, 3, 30), np.float32), batch)

    assert_available(actions, batch)
    for agent in range(3):
        assert set(actions[:, agent].tolist()) == set(np.flatnonzero(avail[agent]).tolist())


def test_random_policy_is_reproducible_from_its_seed() -> None:
    avail = np.ones((8, 3, 9), dtype=bool)
    obs = np.zeros((8, 3, 30), np.float32)
    np.testing.assert_array_equal(RandomPolicy(seed=3).act(obs, avail), RandomPolicy(seed=3).act(obs, avail))


# --- focus fire on 2s3z (Protoss enemies: health and shield columns, 2 unit-type bits) -------------------
LAYOUT_2S3Z = ObsLayout.for_map(get_map("2s3z"))


def empty_2s3z(batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """No enemy in sight, every agent alive and free to move anywhere, nothing to attack."""
    lay = LAYOUT_2S3Z
    obs = np.zeros((batch, lay.n_agents, lay.obs_size), dtype=np.float32)
    avail = np.zeros((batch, lay.n_agents, lay.n_actions), dtype=bool)
    avail[..., STOP : W + 1] = True
    return obs, avail


def see_enemy(
    obs: np.ndarray,
    agent: int,
    enemy: int,
    dx: float,
    dy: float,
    health: float = 1.0,
    shield: float = 1.0,
    battle: int = 0,
) -> None:
    lay = LAYOUT_2S3Z
    row = lay.enemy_block(obs)[battle, agent, enemy]  # a view: writes go into obs
    dist = float(np.hypot(dx, dy))
    row[[lay.ATTACKABLE, lay.DIST, lay.DX, lay.DY]] = [float(dist < 6 / 9), dist, dx, dy]
    row[lay.HEALTH], row[lay.HEALTH + 1] = health, shield
    row[lay.HEALTH + 2] = 1.0  # unit type: stalker


def test_focus_fire_attacks_the_weakest_attackable_enemy_counting_shields() -> None:
    obs, avail = empty_2s3z()
    see_enemy(obs, 0, enemy=0, dx=0.3, dy=0.0, health=0.3, shield=1.0)  # 1.3 in all
    see_enemy(obs, 0, enemy=1, dx=0.2, dy=0.0, health=0.1, shield=0.0)  # weakest, but not attackable
    see_enemy(obs, 0, enemy=2, dx=0.5, dy=0.0, health=0.6, shield=0.0)  # 0.6: the target
    avail[0, 0, [ATTACK + 0, ATTACK + 2]] = True

    actions = FocusFirePolicy(LAYOUT_2S3Z).act(obs, avail)

    assert actions[0, 0] == ATTACK + 2
    assert_available(actions, avail)


def test_focus_fire_closes_in_on_the_nearest_visible_enemy_when_none_is_attackable() -> None:
    obs, avail = empty_2s3z()
    see_enemy(obs, 0, enemy=0, dx=0.8, dy=0.1)  # nearest: mostly east
    see_enemy(obs, 0, enemy=3, dx=-0.1, dy=0.9)
    see_enemy(obs, 1, enemy=0, dx=0.1, dy=-0.7)  # mostly south
    see_enemy(obs, 2, enemy=0, dx=0.8, dy=0.1)  # east is blocked: go north instead
    avail[0, 2, E] = False

    actions = FocusFirePolicy(LAYOUT_2S3Z, advance=(-1.0, 0.0)).act(obs, avail)

    assert actions[0, :3].tolist() == [E, S, N]
    assert_available(actions, avail)


def test_focus_fire_advances_toward_the_enemy_spawn_when_no_enemy_is_visible() -> None:
    spec = get_map("2s3z")
    assert advance_direction(spec) == (14.0, 0.0)
    obs, avail = empty_2s3z(batch=2)
    avail[1, 4, E] = False  # blocked, and the advance has no north-south component: stop

    actions = FocusFirePolicy(LAYOUT_2S3Z, advance=advance_direction(spec)).act(obs, avail)

    assert (actions[0] == E).all()
    assert actions[1].tolist() == [E, E, E, E, STOP]


def test_focus_fire_gives_dead_agents_the_no_op() -> None:
    obs, avail = empty_2s3z()
    avail[0, 3] = False
    avail[0, 3, NO_OP] = True

    actions = FocusFirePolicy(LAYOUT_2S3Z).act(obs, avail)

    assert actions[0, 3] == NO_OP
    assert_available(actions, avail)


def test_focus_fire_with_full_exploration_still_takes_only_available_actions() -> None:
    obs, avail = empty_2s3z(batch=200)
    avail[:, :, ATTACK + 1] = True
    actions = FocusFirePolicy(LAYOUT_2S3Z, seed=1, epsilon=1.0).act(obs, avail)

    assert_available(actions, avail)
    assert set(actions.ravel().tolist()) == {STOP, N, S, E, W, ATTACK + 1}


def test_exploration_rate_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        FocusFirePolicy(LAYOUT_2S3Z, epsilon=1.5)


# --- Medivacs on MMM (agents: 2 marauders, 7 marines, 1 medivac; no shields, 3 unit-type bits) -------
MMM = get_map("MMM")
LAYOUT_MMM = ObsLayout.for_map(MMM)
MEDIVAC = 2  # MMM's unit-type order: marauder, marine, medivac


def empty_mmm() -> tuple[np.ndarray, np.ndarray]:
    lay = LAYOUT_MMM
    obs = np.zeros((1, lay.n_agents, lay.obs_size), dtype=np.float32)
    avail = np.zeros((1, lay.n_agents, lay.n_actions), dtype=bool)
    avail[..., STOP : W + 1] = True
    return obs, avail


def make_medivac(obs: np.ndarray, agent: int) -> None:
    lay = LAYOUT_MMM
    obs[0, agent, lay.own_offset] = 1.0  # own health
    obs[0, agent, lay.own_offset + 1 + MEDIVAC] = 1.0


def see_ally(
    obs: np.ndarray, agent: int, ally_id: int, dx: float, dy: float, health: float, unit_type: int = 1
) -> None:
    """Fill the row of agent `ally_id` in agent `agent`'s observation (rows skip the observer)."""
    lay = LAYOUT_MMM
    row = lay.ally_block(obs)[0, agent, ally_id if ally_id < agent else ally_id - 1]
    row[[lay.ATTACKABLE, lay.DIST, lay.DX, lay.DY, lay.HEALTH]] = [1.0, np.hypot(dx, dy), dx, dy, health]
    row[lay.HEALTH + 1 + unit_type] = 1.0


def test_healer_type_is_found_from_the_map() -> None:
    assert healer_type_id(MMM) == MEDIVAC
    assert healer_type_id(get_map("2s3z")) is None


def test_medivac_heals_the_most_damaged_ally_it_can_reach_by_ally_id() -> None:
    obs, avail = empty_mmm()
    medic = 4  # not the last agent, so obs rows and ally ids differ past it
    make_medivac(obs, medic)
    see_ally(obs, medic, ally_id=1, dx=0.1, dy=0.0, health=0.5)
    see_ally(obs, medic, ally_id=3, dx=0.2, dy=0.0, health=0.4)
    see_ally(obs, medic, ally_id=6, dx=0.1, dy=0.1, health=0.2)  # most damaged, obs row 5
    see_ally(obs, medic, ally_id=8, dx=0.1, dy=0.2, health=0.1)  # even more, but out of reach
    avail[0, medic, ATTACK + np.array([1, 3, 6])] = True

    policy = make_policy("heuristic", LAYOUT_MMM, MMM, seed=0)
    actions = policy.act(obs, avail)

    assert actions[0, medic] == ATTACK + 6
    assert_available(actions, avail)


def test_medivac_ignores_allies_at_full_health_and_follows_the_nearest_ally() -> None:
    obs, avail = empty_mmm()
    make_medivac(obs, 9)
    see_ally(obs, 9, ally_id=0, dx=0.0, dy=0.6, health=1.0, unit_type=0)  # nearest: north
    see_ally(obs, 9, ally_id=5, dx=0.9, dy=0.0, health=1.0)
    avail[0, 9, ATTACK + np.array([0, 5])] = True
    # A marine in the same battle that can shoot still shoots, not heals.
    see_enemy_mmm = LAYOUT_MMM.enemy_block(obs)[0, 2, 4]
    see_enemy_mmm[[LAYOUT_MMM.ATTACKABLE, LAYOUT_MMM.DIST, LAYOUT_MMM.HEALTH]] = [1.0, 0.5, 0.7]
    avail[0, 2, ATTACK + 4] = True

    actions = make_policy("heuristic", LAYOUT_MMM, MMM, seed=0).act(obs, avail)

    assert actions[0, 9] == N
    assert actions[0, 2] == ATTACK + 4
    assert_available(actions, avail)


def test_dead_medivac_takes_the_no_op() -> None:
    obs, avail = empty_mmm()
    avail[0, 9] = False
    avail[0, 9, NO_OP] = True
    actions = make_policy("heuristic", LAYOUT_MMM, MMM).act(obs, avail)
    assert actions[0, 9] == NO_OP


# --- by name ----------------------------------------------------------------------------------------
def test_policies_are_made_by_name() -> None:
    spec = get_map("2s3z")
    assert isinstance(make_policy("random", LAYOUT_2S3Z, spec, seed=0), RandomPolicy)
    heuristic = make_policy("heuristic", LAYOUT_2S3Z, spec, seed=0)
    assert isinstance(heuristic, FocusFirePolicy)
    assert heuristic.advance == (14.0, 0.0)
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        make_policy("greedy", LAYOUT_2S3Z, spec, seed=0)
