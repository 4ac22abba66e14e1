"""Scripted policies for collecting datasets, acting on batches of SMAC observations.

They read only what an agent sees (its observation and its availability mask, laid out as
`ObsLayout` describes), never simulator internals, so the same policy collects data on the lite world
and on real StarCraft II. All work is vectorised over [B, n_agents]; every returned action is
available to its agent.

Actions (SMAC): 0 no-op, 1 stop, 2..5 move N (+y), S (-y), E (+x), W (-x), 6+i attack enemy i (a
Medivac instead heals ally i). SMACv2 with `conic_fov` puts its turn-the-cone actions before the
attacks (`ObsLayout.attack_offset`); the policies never turn the cone.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.envs.layout import N_NON_ATTACK_ACTIONS, SIGHT_RANGE, ObsLayout
from common.envs.maps import MapSpec
from common.envs.units import UNITS

NO_OP, STOP, MOVE_N, MOVE_S, MOVE_E, MOVE_W = range(6)
ATTACK_BASE = N_NON_ATTACK_ACTIONS
# A Medivac with nobody to heal keeps within this many cells of the nearest ally (heal range is 4).
FOLLOW_DISTANCE = 3.0
POLICIES = ("random", "heuristic")


class Policy(Protocol):
    def act(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        """obs [B, n, O], avail [B, n, A] -> actions [B, n] int64."""
        ...


def random_available(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    """A uniformly random available action per agent: the argmax of noise restricted to `avail`."""
    mask = np.asarray(avail).astype(bool)
    noise = np.where(mask, rng.random(mask.shape), -1.0)
    return noise.argmax(axis=-1).astype(np.int64)


class RandomPolicy:
    """Uniform over each agent's available actions."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        return random_available(self._rng, avail)


def advance_direction(spec: MapSpec) -> tuple[float, float]:
    """The way from the ally spawn to the enemy spawn: where to go while no enemy is in sight."""
    return (spec.enemy_spawn[0] - spec.ally_spawn[0], spec.enemy_spawn[1] - spec.ally_spawn[1])


def healer_type_id(spec: MapSpec) -> int | None:
    """Index of the healer (Medivac) in the map's unit-type one-hot, or None when it cannot be seen."""
    if not spec.unit_type_bits:
        return None
    for type_id, name in enumerate(spec.type_order):
        if UNITS[name].healer and any(name == ally for ally, _ in spec.allies):
            return type_id
    return None


class FocusFirePolicy:
    """Everyone shoots the weakest enemy in range; otherwise closes in on the nearest visible enemy,
    otherwise advances toward the enemy spawn. Medivacs heal the most damaged ally in range, otherwise
    stay with the nearest ally. With probability `epsilon` an agent takes a random available action
    instead, for datasets of less than expert quality.

    `healer_type` is the Medivac's index in the unit-type one-hot (see `healer_type_id`); None means
    the map has no healer agents.
    """

    def __init__(
        self,
        layout: ObsLayout,
        advance: tuple[float, float] = (1.0, 0.0),
        seed: int | None = 0,
        epsilon: float = 0.0,
        healer_type: int | None = None,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if healer_type is not None and not 0 <= healer_type < layout.unit_type_bits:
            raise ValueError(f"healer_type {healer_type} is not a unit type of this layout")
        self.layout = layout
        self.advance = (float(advance[0]), float(advance[1]))
        self.epsilon = float(epsilon)
        self.healer_type = healer_type
        self._rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        mask = np.asarray(avail).astype(bool)
        actions = self._fighter_actions(obs, mask)
        if self.healer_type is not None:
            healer = self._is_healer(obs)
            if healer.any():
                actions = np.where(healer, self._healer_actions(obs, mask), actions)
        actions = _fall_back_to_available(actions, mask)
        if self.epsilon > 0.0:
            explore = self._rng.random(actions.shape) < self.epsilon
            actions = np.where(explore, random_available(self._rng, mask), actions)
        return actions.astype(np.int64)

    # --- fighters ----------------------------------------------------------------------------------
    def _fighter_actions(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        lay = self.layout
        enemies = lay.enemy_block(obs)  # [B, n, E, F]
        dist = enemies[..., lay.DIST]

        base = lay.attack_offset
        attackable = avail[..., base : base + lay.n_enemies]
        # Lowest health first; distance only breaks ties (and decides when health is not observed).
        score = np.where(attackable, self._enemy_health(enemies) + 1e-3 * dist, np.inf)
        attack = base + score.argmin(axis=-1)

        # Invisible and dead enemies are all-zero rows.
        visible = np.any(enemies != 0.0, axis=-1)
        nearest = np.where(visible, dist, np.inf).argmin(axis=-1)
        dx = _pick(enemies[..., lay.DX], nearest)
        dy = _pick(enemies[..., lay.DY], nearest)
        chase, chase_ok = _move_toward(dx, dy, avail)
        advance, advance_ok = self._advance(avail)

        sees_enemy = visible.any(axis=-1)
        approach = np.where(sees_enemy, np.where(chase_ok, chase, STOP), np.where(advance_ok, advance, STOP))
        return np.where(attackable.any(axis=-1), attack, approach)

    def _enemy_health(self, enemies: np.ndarray) -> np.ndarray:
        lay = self.layout
        if not lay.flags.obs_all_health:
            return np.zeros(enemies.shape[:-1], dtype=np.float32)
        health = enemies[..., lay.HEALTH]
        if lay.enemy_shield_bits:
            health = health + enemies[..., lay.HEALTH + 1]
        return health

    def _advance(self, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = avail.shape[:-1]
        return _move_toward(np.full(shape, self.advance[0]), np.full(shape, self.advance[1]), avail)

    # --- Medivacs ----------------------------------------------------------------------------------
    def _is_healer(self, obs: np.ndarray) -> np.ndarray:
        lay = self.layout
        assert self.healer_type is not None
        return obs[..., lay.own_type_offset + self.healer_type] > 0.5

    def _healer_actions(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        lay = self.layout
        assert self.healer_type is not None
        n = lay.n_agents
        stop = np.full(avail.shape[:-1], STOP, dtype=np.int64)
        if n < 2:
            return stop
        allies = lay.ally_block(obs)  # [B, n, n-1, F]: rows skip the observing agent itself
        ally_health_bits = (1 + lay.ally_shield_bits) if lay.flags.obs_all_health else 0

        # Heal action 6+j targets agent j, whose row in agent i's observation is j, or j-1 past i.
        m = min(n, lay.n_enemies)
        agent = np.arange(n)[:, None]
        target = np.arange(m)[None, :]
        row = np.where(target < agent, target, target - 1).clip(0, n - 2)
        by_target = allies[..., agent, row, :]  # [B, n, m, F]
        base = lay.attack_offset
        healable = avail[..., base : base + m] & (target != agent)
        dist = by_target[..., lay.DIST]
        if ally_health_bits:
            health = by_target[..., lay.HEALTH]
            if lay.ally_shield_bits:
                health = health + by_target[..., lay.HEALTH + 1]
            # Healing a unit at full health does nothing; only damaged allies are worth the energy.
            healable = healable & (by_target[..., lay.HEALTH] < 1.0 - 1e-6)
        else:
            health = np.zeros_like(dist)
        score = np.where(healable, health + 1e-3 * dist, np.inf)
        heal = base + score.argmin(axis=-1)

        # Otherwise stay with the nearest visible ally that is not itself a healer.
        ally_healer = allies[..., lay.HEALTH + ally_health_bits + self.healer_type] > 0.5
        followable = (allies[..., lay.ATTACKABLE] > 0.0) & ~ally_healer
        ally_dist = allies[..., lay.DIST]
        nearest = np.where(followable, ally_dist, np.inf).argmin(axis=-1)
        far = _pick(ally_dist, nearest) * SIGHT_RANGE > FOLLOW_DISTANCE
        follow, follow_ok = _move_toward(
            _pick(allies[..., lay.DX], nearest), _pick(allies[..., lay.DY], nearest), avail
        )
        advance, advance_ok = self._advance(avail)

        sees_ally = followable.any(axis=-1)
        stay = np.where(far & follow_ok, follow, STOP)
        move = np.where(sees_ally, stay, np.where(advance_ok, advance, STOP))
        return np.where(healable.any(axis=-1), heal, move)


def make_policy(
    name: str, layout: ObsLayout, map_spec: MapSpec, seed: int | None = 0, epsilon: float = 0.0
) -> Policy:
    """A scripted policy by name: "random" or "heuristic" (focus fire)."""
    if name == "random":
        return RandomPolicy(seed)
    if name == "heuristic":
        return FocusFirePolicy(
            layout,
            advance=advance_direction(map_spec),
            seed=seed,
            epsilon=epsilon,
            healer_type=healer_type_id(map_spec),
        )
    raise ValueError(f"unknown policy {name!r}: expected one of {', '.join(POLICIES)}")


# --- helpers -----------------------------------------------------------------------------------------
def _pick(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[..., k] at k = index[...]."""
    return np.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def _is_available(avail: np.ndarray, action: np.ndarray) -> np.ndarray:
    return _pick(avail, action)


def _move_toward(dx: np.ndarray, dy: np.ndarray, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The move along the axis with the larger component of (dx, dy), or along the other axis when
    that move is blocked and the other component is non-zero. Returns (action, whether it is usable)."""
    horizontal = np.abs(dx) >= np.abs(dy)
    along_x = np.where(dx > 0, MOVE_E, MOVE_W)
    along_y = np.where(dy > 0, MOVE_N, MOVE_S)
    primary = np.where(horizontal, along_x, along_y)
    secondary = np.where(horizontal, along_y, along_x)
    moving = (dx != 0) | (dy != 0)
    primary_ok = _is_available(avail, primary) & moving
    secondary_ok = _is_available(avail, secondary) & (np.where(horizontal, dy, dx) != 0)
    return np.where(primary_ok, primary, secondary), primary_ok | secondary_ok


def _fall_back_to_available(actions: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """Keep available choices; replace the rest by stop, else no-op (dead agents), else any allowed."""
    ok = _is_available(avail, actions)
    fallback = np.where(avail[..., STOP], STOP, np.where(avail[..., NO_OP], NO_OP, avail.argmax(axis=-1)))
    return np.where(ok, actions, fallback)
