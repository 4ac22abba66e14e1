"""SMACv2's rules for the lite engine: `Smacv2Rules`, the part of `lite.Smacv2BatchEnv` (what
`LiteBatchEnv(map_name)` builds for a SMACv2 scenario such as `protoss_5_vs_5`, or for
`10gen_protoss` with a `capability_config`) that differs from SMAC's maps.

The battles are `LiteBatchEnv`'s with the unit constants held per battle ([B, N] and [B, N, N]
arrays, redrawn with the team at every reset) and SMACv2's observation, state and action rules
(smacv2/env/starcraft2/starcraft2.py): per-unit sight and shoot ranges (`use_unit_ranges`,
`min_attack_range`), the cone of view (`conic_fov`, `num_fov_actions`), the own position, enemies
seen through SMACv2's sharing rule (`prob_obs_enemy`, see `_enemy_sight`), `fully_observable`,
`action_mask`, reward `max(., 0)` when only positive. The combat model is the lite world's
(docs/world.md); what differs from SC2 is listed there. The class is a mixin so that this module
does not import `lite.py` (which composes it with `LiteBatchEnv`); it uses only what that class
sets up (`_separate`, `_regenerate`, `_score`, `_clamp`, the battle arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.envs.layout import N_NON_ATTACK_ACTIONS, SIGHT_RANGE
from common.envs.lite_rules import (
    ACQUIRE_MARGIN,
    CHASE_OVERSHOOT,
    GOAL_REACHED,
    MOVE_DIRECTIONS,
    uniform,
)
from common.envs.maps import GEN_MAPS, MAP_SIZE, MapSpec, smacv2_spec
from common.envs.protocol import BatchObservation
from common.envs.smacv2 import (
    DEFAULT_SHOOT_RANGE,
    DEFAULT_SIGHT_RANGE,
    SCENARIOS,
    SHOOT_RANGE,
    CapabilityConfig,
    ally_order,
    draw_start_positions,
    draw_teams,
    episode_rng,
    scenario_capability,
    spread_stacked,
)
from common.envs.smacv2 import (
    SIGHT_RANGE as UNIT_SIGHT_RANGE,
)
from common.envs.units import (
    LOOPS_PER_SECOND,
    MEDIVAC_ENERGY_PER_HP,
    MEDIVAC_START_ENERGY,
    UNITS,
    UnitSpec,
)

EPS = 1e-7  # smacv2 starcraft2.py `EPS`, in the cone test
_SPAWN_GAP = 0.2  # between units SC2 places around one spawn point
# Salts of the per-step random numbers (agent order, sharing draws), apart from the spawn jitter's.
_ORDER_SALT, _SHARE_SALT = 0x0D0E, 0x5EE


class _BattleUnits:
    """The unit constants of every battle, [B, N] (or [B, N, N] for pairs), for the teams drawn at
    the last reset; `set_rows` redraws them. Per-type tables are [3] / [3, 3] over the race's types."""

    # What `common.snapshot` leaves out: the constructor makes these the same every time.
    SNAPSHOT_SKIP = ("specs", "_t", "_raw", "_to_hp", "_opposed", "is_enemy", "protoss", "zerg", "tie_break")

    def __init__(self, types: list[UnitSpec], num_envs: int, n_agents: int, n_enemies: int, step_mul: int):
        self.n_units = n = n_agents + n_enemies
        self.n_agents = n_agents
        self.specs = types
        f32 = np.float32
        t = len(types)
        seconds = step_mul / LOOPS_PER_SECOND

        def col(getter) -> np.ndarray:
            return np.array([getter(u) for u in types], dtype=f32)

        # Per type.
        self._t = {
            "max_hp": col(lambda u: u.health),
            "max_sh": col(lambda u: u.shield),
            "radius": col(lambda u: u.radius),
            "step_len": col(lambda u: u.speed * seconds),
            "weapon_range": col(lambda u: u.weapon_range),
            "cooldown": col(lambda u: u.cooldown_loops),
            "max_cd": col(lambda u: u.max_cooldown),
            "heal_per_step": col(lambda u: u.damage * seconds if u.healer else 0.0),
            "splash_radius": col(lambda u: u.splash_radius),
            "suicide_radius": col(lambda u: u.suicide_radius),
            "healer": np.array([u.healer for u in types]),
            "ground": np.array([not u.air for u in types]),
            "bio": np.array([u.bio for u in types]),
        }
        raw = np.zeros((t, t), dtype=f32)
        to_hp = np.zeros_like(raw)
        for a, ua in enumerate(types):
            for b, ub in enumerate(types):
                if ua.healer:
                    continue
                per_hit = ua.damage + ua.bonus_armored * ub.armored + ua.bonus_light * ub.light
                raw[a, b] = ua.hits * per_hit
                to_hp[a, b] = ua.hits * max(0.5, per_hit - ub.armor)
        self._raw, self._to_hp = raw, to_hp
        side = np.arange(n) >= n_agents
        self.is_enemy = side
        self._opposed = (side[:, None] != side[None, :]).astype(f32)  # no friendly fire
        race = types[0].race
        self.protoss = np.full(n, race == "P")
        self.zerg = np.full(n, race == "Z")
        i, j = np.triu_indices(n, 1)
        self.tie_break = np.zeros((n, n), dtype=np.complex64)
        self.tie_break[i, j] = np.exp(2.4j * (i * n + j))
        self.tie_break[j, i] = -self.tie_break[i, j]
        self.type_id = np.zeros((num_envs, n), dtype=np.int64)
        self.sight = np.zeros((num_envs, n_agents), dtype=f32)
        self.shoot = np.zeros((num_envs, n_agents), dtype=f32)
        for name in self._t:
            setattr(self, name, np.zeros((num_envs, n), dtype=self._t[name].dtype))
        for name in ("safe_max_sh", "acquire"):
            setattr(self, name, np.zeros((num_envs, n), dtype=f32))
        for name in ("raw_damage", "hp_damage", "contact", "separation", "reach"):
            setattr(self, name, np.zeros((num_envs, n, n), dtype=f32))

    def set_rows(self, rows: np.ndarray, type_id: np.ndarray, sight: np.ndarray, shoot: np.ndarray) -> None:
        """Battles `rows` now hold units of types `type_id` [k, N] (agents with sight and shoot [k, n])."""
        self.type_id[rows] = type_id
        self.sight[rows] = sight
        self.shoot[rows] = shoot
        for name, table in self._t.items():
            getattr(self, name)[rows] = table[type_id]
        max_sh = self.max_sh[rows]
        self.safe_max_sh[rows] = np.where(max_sh > 0, max_sh, 1)
        self.acquire[rows] = np.maximum(self.weapon_range[rows], 4.0) + ACQUIRE_MARGIN
        pair = (type_id[:, :, None], type_id[:, None, :])
        self.raw_damage[rows] = self._raw[pair] * self._opposed
        self.hp_damage[rows] = self._to_hp[pair] * self._opposed
        radius = self.radius[rows]
        contact = radius[:, :, None] + radius[:, None, :]
        self.contact[rows] = contact
        self.separation[rows] = contact * (1 - np.eye(self.n_units, dtype=np.float32))
        self.reach[rows] = contact + self.weapon_range[rows][:, :, None]


class Smacv2Rules:
    """SMACv2's battles, mixed into `LiteBatchEnv` by `lite.Smacv2BatchEnv` (see the module doc)."""

    SNAPSHOT_SKIP = (
        "spec",
        "layout",
        "race",
        "capability",
        "_canonical_fov",
        "_sight_by_type",
        "_shoot_by_type",
        "_pairs",  # scratch arrays of the separation step
    )

    def __init__(
        self,
        map_name: str = "protoss_5_vs_5",
        num_envs: int = 1,
        seed: int | None = 0,
        *,
        capability_config: dict[str, Any] | CapabilityConfig | None = None,
        use_unit_ranges: bool = False,
        min_attack_range: float = 2,
        kill_unit_step_mul: int = 2,
        fully_observable: bool = False,
        prob_obs_enemy: float = 1.0,
        action_mask: bool = True,
        **smac_flags,
    ):
        self.race, self.capability = _capability(map_name, capability_config)
        if not 0.0 <= prob_obs_enemy <= 1.0:
            raise ValueError(f"prob_obs_enemy must be in [0, 1], got {prob_obs_enemy}")
        if min_attack_range < 0:
            raise ValueError(f"min_attack_range must be >= 0, got {min_attack_range}")
        if kill_unit_step_mul < 0:
            raise ValueError(f"kill_unit_step_mul must be >= 0, got {kill_unit_step_mul}")
        if smac_flags.get("conic_fov") and smac_flags.get("num_fov_actions", 12) < 1:
            raise ValueError("num_fov_actions must be >= 1 with conic_fov")
        self.use_unit_ranges = bool(use_unit_ranges)
        self.min_attack_range = float(min_attack_range)
        types = self.race.unit_types
        if self.use_unit_ranges:
            self._sight_by_type = np.array([UNIT_SIGHT_RANGE[t] for t in types], dtype=np.float32)
            shoot = [max(SHOOT_RANGE[t], self.min_attack_range) for t in types]
        else:
            self._sight_by_type = np.full(len(types), DEFAULT_SIGHT_RANGE, dtype=np.float32)
            shoot = [DEFAULT_SHOOT_RANGE] * len(types)
        self._shoot_by_type = np.array(shoot, dtype=np.float32)
        # Only SMACv2's "health" capability (units dying below a drawn health level) uses it; the
        # scenarios here do not draw health levels, so it is accepted and changes nothing.
        self.kill_unit_step_mul = int(kill_unit_step_mul)
        self.fully_observable = bool(fully_observable)
        self.prob_obs_enemy = float(prob_obs_enemy)
        self.action_mask = bool(action_mask)
        super().__init__(map_name, num_envs, seed, **smac_flags)
        n, m, B = self.n_agents, self.n_enemies, num_envs
        specs = [UNITS[name] for name in self.race.unit_types]
        self.units = _BattleUnits(specs, B, n, m, self.step_mul)
        self._is_mmm = self.race.code == "T"  # smacv2 `only_medivac_left`: terran_gen too
        self._fighter = np.ones((B, n + m), dtype=bool)
        self.max_reward = np.zeros(B, dtype=np.float64)
        self._goal = np.zeros((B, 1), dtype=np.complex64)
        self._type_onehot = np.zeros((B, n + m, self.layout.unit_type_bits), dtype=np.float32)
        # The other allies' types as the observation shows them, feature-major [bits, B, n, n - 1].
        self._ally_types = np.zeros((self.layout.unit_type_bits, B, n, n - 1), dtype=np.float32)
        k = self.layout.n_fov_actions
        # smacv2 `canonical_fov_directions`: (cos, sin) of 2 pi i / num_fov_actions.
        self._canonical_fov = np.exp(2j * np.pi * np.arange(k) / max(k, 1)).astype(np.complex64)
        self.fov = np.ones((B, n), dtype=np.complex64)  # each agent's cone direction, (1, 0) at reset
        self.tags = np.full((B, m), -1, dtype=np.int64)  # smacv2 `enemy_tags`: who first saw enemy e
        self.shared = np.zeros((B, m, n), dtype=bool)  # smacv2 `obs_enemies` [e, agent]
        self._slots = self.n_actions - self.layout.attack_offset
        self._can_shoot = np.zeros((B, n, self._slots), dtype=bool)

    def _map_spec(self, map_name: str) -> MapSpec:
        return smacv2_spec(self.race, self.capability.n_units, self.capability.n_enemies, map_name)

    def get_env_info(self) -> dict:
        """SMAC's keys plus SMACv2's `agent_features` and `enemy_features` (state attribute names)."""
        info = super().get_env_info()
        shield = ["shield"] if self.layout.ally_shield_bits else []
        fov = ["fov_x", "fov_y"] if self.layout.n_fov_actions else []
        types = [f"type_{bit}" for bit in range(self.layout.unit_type_bits)]
        info["agent_features"] = ["health", "energy/cooldown", "rel_x", "rel_y", *shield, *fov, *types]
        info["enemy_features"] = ["health", "rel_x", "rel_y", *shield, *types]
        return info

    @staticmethod
    def _only_positive(reward: np.ndarray) -> np.ndarray:
        """smacv2 `reward_battle`: max(damage + deaths, 0) (SMAC took the absolute value)."""
        return np.maximum(reward, 0)

    # ------------------------------------------------------------------ episodes
    def _reset_rows(self, rows: np.ndarray) -> None:
        n, m, N = self.n_agents, self.n_enemies, self.units.n_units
        race_types = list(self.race.unit_types)
        type_index = {name: i for i, name in enumerate(race_types)}
        alphabet = np.argsort(np.argsort(race_types))  # each type's place in alphabetical order
        k = len(rows)
        type_id = np.zeros((k, N), dtype=np.int64)
        ally_at, enemy_at = np.zeros((k, n, 2)), np.zeros((k, m, 2))
        # The draws, battle by battle from its own generator; what follows them works on all at once.
        for i, b in enumerate(rows):
            rng = episode_rng(self._battle_seeds[b], self._episodes[b])
            team, enemies = draw_teams(self.capability, rng)
            ally_at[i], enemy_at[i] = draw_start_positions(self.capability, rng)
            type_id[i] = [type_index[name] for name in (*team, *enemies)]
        spacing = 2 * max(UNITS[t].radius for t in race_types) + _SPAWN_GAP
        ally_at, enemy_at = spread_stacked(ally_at, spacing), spread_stacked(enemy_at, spacing)
        order = ally_order(alphabet[type_id[:, :n]], ally_at)
        type_id[:, :n] = np.take_along_axis(type_id[:, :n], order, axis=1)
        ally_at = np.take_along_axis(ally_at, order[:, :, None], axis=1)
        pos = np.zeros((k, N), dtype=np.complex128)
        pos[:, :n] = ally_at[..., 0] + 1j * ally_at[..., 1]
        pos[:, n:] = enemy_at[..., 0] + 1j * enemy_at[..., 1]
        sight, shoot = self._sight_by_type[type_id[:, :n]], self._shoot_by_type[type_id[:, :n]]
        u = self.units
        u.set_rows(rows, type_id, sight, shoot)
        self.pos[rows] = self._clamp(pos.astype(np.complex64))
        self.hp[rows] = u.max_hp[rows]
        self.sh[rows] = u.max_sh[rows]
        self.cd[rows] = 0.0
        self.energy[rows] = np.where(u.healer[rows], MEDIVAC_START_ENERGY, 0.0)
        self.since_damage[rows] = 1e6
        self.target[rows] = -1
        self.last_action[rows] = 0
        self.has_acted[rows] = False
        self.steps[rows] = 0
        self._fighter[rows] = ~u.healer[rows]
        self._type_onehot[rows] = np.eye(self.layout.unit_type_bits, dtype=np.float32)[type_id]
        self._ally_types[:, rows] = self._type_onehot[rows, :n].transpose(2, 0, 1)[:, :, self._others]
        # The enemies attack-move toward where the allies started (the lite world's built-in AI).
        self._goal[rows, 0] = self.pos[rows, :n].mean(axis=1)
        enemy_health = (u.max_hp[rows, n:] + u.max_sh[rows, n:]).sum(axis=1, dtype=np.float64)
        # Per episode, so that a won battle is worth reward_scale_rate whatever the teams (smacv2
        # fixes max_reward from its first episode's enemies; see docs/world.md).
        self.max_reward[rows] = enemy_health + m * self.reward_death_value + self.reward_win
        self.fov[rows] = 1.0
        self.tags[rows] = -1
        self.shared[rows] = False

    # ------------------------------------------------------------------ dynamics
    def _advance(self, actions: np.ndarray) -> dict:
        """One agent step of every battle: the lite world's combat with per-battle unit tables."""
        u, n, N, B = self.units, self.n_agents, self.units.n_units, self.num_envs
        pos, hp = self.pos, self.hp
        alive = hp > 0
        prev_health = hp + self.sh
        rows = np.arange(B)[:, None]
        offset = pos[:, None, :] - pos[:, :, None]  # [b, i, j] = pos_j - pos_i
        dist = np.abs(offset)
        healer, base = u.healer, self.layout.attack_offset

        target = np.full((B, N), -1, dtype=np.int64)
        dest = pos.copy()
        walking = np.zeros((B, N), dtype=bool)
        acts = actions
        attack = acts >= base
        slot = np.clip(acts - base, 0, self._slots - 1)
        # SMACv2 sends no command for an attack out of range (possible with action_mask off) nor for
        # turning the cone; SC2 then carries on with the last order, the lite world idles.
        shootable = np.take_along_axis(self._can_shoot, slot[..., None], axis=2)[..., 0]
        ordered = attack & shootable
        target[:, :n] = np.where(ordered, slot + np.where(healer[:, :n], 0, n), -1)
        moving = (acts >= 2) & (acts < N_NON_ATTACK_ACTIONS)
        step_dir = MOVE_DIRECTIONS[np.clip(acts - 2, 0, 3)]
        dest[:, :n] = np.where(moving, pos[:, :n] + self.move_amount * step_dir, pos[:, :n])
        walking[:, :n] = moving
        turning = (acts >= N_NON_ATTACK_ACTIONS) & (acts < base)
        if self.layout.n_fov_actions:
            turn = self._canonical_fov[np.clip(acts - N_NON_ATTACK_ACTIONS, 0, self.layout.n_fov_actions - 1)]
            self.fov = np.where(turning, turn, self.fov)
        idle = ((acts == 1) | turning | (attack & ~shootable)) & ~healer[:, :n]
        in_reach = (dist[:, :n, n:] <= u.reach[:, :n, n:]) & alive[:, None, n:]
        nearest = np.argmin(np.where(in_reach, dist[:, :n, n:], np.inf), axis=2) + n
        target[:, :n] = np.where(idle & in_reach.any(axis=2), nearest, target[:, :n])
        self.target[:, :n] = target[:, :n]

        self._enemy_orders(alive, dist, target, dest, walking)

        has_target = (target >= 0) & alive
        tgt = np.where(has_target, target, 0)
        tgt_dist = np.take_along_axis(dist, tgt[:, :, None], axis=2)[..., 0]
        reach = np.take_along_axis(u.reach, tgt[:, :, None], axis=2)[..., 0]
        in_range = has_target & (tgt_dist <= reach)
        steps_loops = np.float32(self.step_mul)
        fires = in_range & (self.cd <= steps_loops) & ~healer
        chase = has_target & ~in_range
        dest = np.where(chase, pos[rows, tgt], dest)
        stop_short = np.where(chase, np.maximum(reach - CHASE_OVERSHOOT, 0), 0).astype(np.float32)
        walking |= chase

        # Damage: one attack per firing unit on its target; a colossus also hits around its target;
        # a baneling hits everyone within its radius once (its target included) and dies.
        blasting = fires & (u.suicide_radius > 0)
        hitting = fires & ~blasting
        pair_raw = np.take_along_axis(u.raw_damage, tgt[:, :, None], axis=2)[..., 0]
        pair_hp = np.take_along_axis(u.hp_damage, tgt[:, :, None], axis=2)[..., 0]
        flat_tgt = (rows * N + tgt)[hitting]
        raw = np.bincount(flat_tgt, pair_raw[hitting], minlength=B * N).reshape(B, N).astype(np.float32)
        to_hp = np.bincount(flat_tgt, pair_hp[hitting], minlength=B * N).reshape(B, N).astype(np.float32)
        # Area damage, per firing splasher / baneling ([k] pairs), added to the units it reaches.
        for source, radius, around_target in (
            (hitting & (u.splash_radius > 0), u.splash_radius, True),
            (blasting, u.suicide_radius, False),
        ):
            b, a = np.nonzero(source)
            if not b.size:
                continue
            centre = tgt[b, a] if around_target else a
            reached = (dist[b, centre] <= radius[b, a][:, None]) & alive[b]  # [k, N]
            if around_target:  # the colossus's target already took the primary hit
                reached[np.arange(b.size), centre] = False
            flat = (b[:, None] * N + np.arange(N))[reached]
            raw += (
                np.bincount(flat, u.raw_damage[b, a][reached], minlength=B * N)
                .reshape(B, N)
                .astype(np.float32)
            )
            to_hp += (
                np.bincount(flat, u.hp_damage[b, a][reached], minlength=B * N)
                .reshape(B, N)
                .astype(np.float32)
            )
        heals = in_range & healer & (self.energy > 0)
        if heals.any():
            want = np.minimum(u.heal_per_step, self.energy / MEDIVAC_ENERGY_PER_HP) * heals
            healed = np.bincount((rows * N + tgt)[heals], want[heals], minlength=B * N).reshape(B, N)
            healed = np.minimum(healed.astype(np.float32), u.max_hp - hp) * alive
            self.energy -= want * MEDIVAC_ENERGY_PER_HP
            hp += healed

        moves = (walking, dest, pos, stop_short)
        return self._settle(
            u, alive, hp, raw, to_hp, fires, blasting, steps_loops, moves, actions, prev_health
        )

    def _enemy_orders(self, alive, dist, target, dest, walking) -> None:
        """The lite world's built-in AI (`LiteBatchEnv._enemy_orders`) with per-battle unit tables:
        attack-move toward where the allies started, acquire the nearest ally in range, keep a
        target while in range or fighting back; Medivacs heal, else follow their nearest fighter."""
        u, n, N, B = self.units, self.n_agents, self.units.n_units, self.num_envs
        rows = np.arange(B)[:, None]
        edge_all = dist[:, n:, :] - u.contact[:, n:, :]
        acquire = u.acquire[:, n:]
        current = self.target[:, n:]
        cur = np.where(current >= 0, current, 0)
        cur_alive = (current >= 0) & alive[rows, cur]
        cur_edge = np.take_along_axis(edge_all, cur[:, :, None], axis=2)[..., 0]
        fights_back = self.target[rows, cur] == np.arange(n, N)[None, :]
        keep = cur_alive & ((cur_edge <= acquire) | (fights_back & (cur_edge <= SIGHT_RANGE)))
        candidates = alive[:, None, :n] & (edge_all[:, :, :n] <= acquire[:, :, None])
        nearest = np.argmin(np.where(candidates, dist[:, n:, :n], np.inf), axis=2)
        chosen = np.where(keep, current, np.where(candidates.any(axis=2), nearest, -1))
        medic = u.healer[:, n:]
        if medic.any():
            patient_ok = alive[:, None, n:] & (u.bio[:, n:] & ~medic)[:, None, :]
            hurt = self.hp[:, n:] < u.max_hp[:, n:]
            near = dist[:, n:, n:] <= (acquire + 2)[:, :, None]
            options = patient_ok & hurt[:, None, :] & near
            frac = self.hp[:, n:] / u.max_hp[:, n:]
            patient = np.argmin(np.where(options, frac[:, None, :], np.inf), axis=2) + n
            chosen = np.where(medic, np.where(options.any(axis=2), patient, -1), chosen)
            fighter = alive[:, None, n:] & ~medic[:, None, :]
            close = np.argmin(np.where(fighter, dist[:, n:, n:], np.inf), axis=2) + n
            follow = np.where(fighter.any(axis=2), self.pos[rows, close], self._goal)
            dest[:, n:] = np.where(medic, follow, dest[:, n:])
            walking[:, n:] = np.where(medic, ~options.any(axis=2), walking[:, n:])
        self.target[:, n:] = chosen
        target[:, n:] = chosen
        far = np.abs(self.pos[:, n:] - self._goal) > GOAL_REACHED
        march = (chosen < 0) & far & ~medic
        dest[:, n:] = np.where(march, self._goal, dest[:, n:])
        walking[:, n:] |= march

    def _after_deaths(self, alive: np.ndarray) -> None:
        """smacv2 `step`: an enemy seen first by an agent that died, or an enemy that died, is no
        longer shared (its tag and its row of `obs_enemies` cleared, and the dead agent's column)."""
        n = self.n_agents
        tagger = np.clip(self.tags, 0, n - 1)
        tagger_dead = (self.tags >= 0) & ~np.take_along_axis(alive[:, :n], tagger, axis=1)
        clear = tagger_dead | ~alive[:, n:]
        # The dead agents that tagged an enemy: a mark at each such tagger (column n: none).
        marks = np.zeros((alive.shape[0], n + 1), dtype=bool)
        np.put_along_axis(marks, np.where(tagger_dead, tagger, n), True, axis=1)
        dead_tagger = marks[:, :n]
        self.shared &= ~clear[:, :, None]
        self.shared &= ~dead_tagger[:, None, :]
        self.tags[clear] = -1

    # ------------------------------------------------------------------ observations
    def _observe(self, rows: np.ndarray | None = None) -> BatchObservation:
        # All battles through a slice (views, no gathers); the fresh battles of a step by index.
        sel = slice(None) if rows is None else rows
        L, u, n, m = self.layout, self.units, self.n_agents, self.n_enemies
        pos, hp, sh = self.pos[sel], self.hp[sel], self.sh[sel]
        B = pos.shape[0]
        f32 = np.float32
        alive = hp > 0
        live = alive[:, :n]
        me = pos[:, :n]
        # Only the agents look: offsets [B, n, m] to the enemies, [B, n, n - 1] to the other allies.
        to_enemy = pos[:, None, n:] - me[:, :, None]
        enemy_dist = np.abs(to_enemy)
        sight = u.sight[sel]
        fov = self.fov[sel]

        avail, can_shoot = self._available_v2(sel, pos, alive, to_enemy, enemy_dist)
        self._can_shoot[sel] = can_shoot
        sees_enemy = self._in_view(me, fov, to_enemy, enemy_dist, sight)
        shown_enemy = self._enemy_sight(sel, live, alive[:, n:], sees_enemy)

        max_hp, safe_sh = u.max_hp[sel], u.safe_max_sh[sel]
        health, shield = hp / max_hp, sh / safe_sh
        onehot = self._type_onehot[sel]
        scale = sight[:, :, None]
        bits = L.unit_type_bits
        obs = np.zeros((B, n, L.obs_size), dtype=f32)
        obs[:, :, :4] = avail[:, :, 2:6]
        if L.flags.obs_pathing_grid or L.flags.obs_terrain_height:
            obs[:, :, 4 : L.move_feats] = self._surroundings(me) * live[:, :, None]

        # Each block of per-unit features is built feature-major ([feature, B, n, unit]: long
        # contiguous rows, one mask multiply), then copied into `obs` in one transposed pass.
        ef = np.empty((L.enemy_feats, B, n, m), dtype=f32)
        # smacv2 reads the true availability of action n_actions_no_attack + e for "attackable".
        ef[0] = can_shoot[:, :, :m]
        np.divide(enemy_dist, scale, out=ef[1])
        np.divide(to_enemy.real, scale, out=ef[2])
        np.divide(to_enemy.imag, scale, out=ef[3])
        col = 4
        if L.flags.obs_all_health:
            ef[col] = health[:, None, n:]
            col += 1
            if L.enemy_shield_bits:
                ef[col] = shield[:, None, n:]
                col += 1
        ef[col : col + bits] = onehot[:, None, n:].transpose(3, 0, 1, 2)
        ef *= shown_enemy
        _block(obs, L.enemy_offset, m, L.enemy_feats)[...] = ef.transpose(1, 2, 3, 0)

        if n > 1:
            others = self._others
            to_ally = pos[:, others] - me[:, :, None]
            ally_dist = np.abs(to_ally)
            sees_ally = self._in_view(me, fov, to_ally, ally_dist, sight)
            seen = live[:, :, None] & alive[:, others] & (sees_ally | self.fully_observable)
            af = np.empty((L.ally_feats, B, n, n - 1), dtype=f32)
            af[0] = 1
            np.divide(ally_dist, scale, out=af[1])
            np.divide(to_ally.real, scale, out=af[2])
            np.divide(to_ally.imag, scale, out=af[3])
            col = 4
            if L.flags.obs_all_health:
                af[col] = health[:, others]
                col += 1
                if L.ally_shield_bits:
                    af[col] = shield[:, others]
                    col += 1
            if self.capability.team_gen.observe:  # otherwise zero-padded
                af[col : col + bits] = self._ally_types[:, sel]
            else:
                af[col : col + bits] = 0
            col += bits
            if L.flags.obs_last_action:
                af[col:] = self._last_action_onehot(sel).transpose(2, 0, 1)[:, :, others]
            af *= seen
            _block(obs, L.ally_offset, n - 1, L.ally_feats)[...] = af.transpose(1, 2, 3, 0)

        col = L.own_offset
        if L.flags.obs_own_health:
            obs[:, :, col] = health[:, :n]
            col += 1
            if L.ally_shield_bits:
                obs[:, :, col] = shield[:, :n]
                col += 1
        if L.own_pos:  # smacv2: x / map_x, y / map_y
            obs[:, :, col] = me.real / MAP_SIZE
            obs[:, :, col + 1] = me.imag / MAP_SIZE
            col += 2
        if L.n_fov_actions:
            obs[:, :, col] = fov.real
            obs[:, :, col + 1] = fov.imag
            col += 2
        obs[:, :, col : col + bits] = onehot[:, :n]
        # A dead agent sees nothing. The unit blocks already hold 0 for it (their masks imply a
        # living agent), so only the columns around them are multiplied.
        live_f = live.astype(f32)[:, :, None]
        obs[:, :, : L.enemy_offset] *= live_f
        obs[:, :, L.own_offset :] *= live_f
        if L.flags.obs_timestep_number:
            obs[:, :, -1] = (self.steps[sel] / self.episode_limit)[:, None]

        state = self._state_v2(sel, pos, alive, health, shield, obs)
        return BatchObservation(obs, state, avail)

    def _in_view(self, me, fov, offset, dist, reach) -> np.ndarray:
        """Whether each agent sees (or reaches) each unit: within `reach` [B, n] of it, and inside its
        cone with conic_fov, exactly as smacv2 `is_position_in_cone` tests it (arctan of slopes, so a
        cone also covers its mirror image across the vertical axis; the range is then inclusive)."""
        if not self.layout.n_fov_actions:
            return dist < reach[:, :, None]
        x_diff = offset.real
        right = x_diff > 0
        x_diff = np.where(right, np.maximum(x_diff, EPS), np.minimum(x_diff, -EPS))
        obj_angle = np.arctan(offset.imag / x_diff)
        fx = np.broadcast_to(fov.real[:, :, None], x_diff.shape)
        fx = np.where(right, np.maximum(fx, EPS), np.minimum(fx, -EPS))
        fov_angle = np.arctan(fov.imag[:, :, None] / fx)
        half = np.pi / self.layout.n_fov_actions  # smacv2 conic_fov_angle / 2 = (2 pi / k) / 2
        return (dist <= reach[:, :, None]) & (np.abs(obj_angle - fov_angle) < half)

    def _enemy_sight(self, sel, live, enemy_alive, sees) -> np.ndarray:
        """Which enemies' features each agent's observation shows, by smacv2 `get_obs_agent`'s rule.

        Agents are observed in a random order (smacv2 shuffles them). The first agent to see an
        enemy nobody has tagged tags it: it shares it with itself and, with probability
        `prob_obs_enemy` each, with every other agent (smacv2 `obs_enemies`); the share lasts until
        the tagger or the enemy dies. An agent shows an enemy it sees and shares (or any living enemy
        with `fully_observable`). As in smacv2, an enemy the agent does not share *at its turn*
        clears the enemy features gathered so far, so only enemies after the last unshared one
        show (SMACv2's code does this; it reads as unintended there, and is kept for fidelity)."""
        n, m = self.n_agents, self.n_enemies
        B = live.shape[0]
        seeds, episodes, steps = self._battle_seeds[sel], self._episodes[sel], self.steps[sel]
        key = episodes.astype(np.uint64) * np.uint64(1 << 20) + steps.astype(np.uint64)
        order = uniform(seeds ^ _ORDER_SALT, key, n)  # sorted, this call's order of the agents
        by_order = order.argsort(axis=1)  # [B, n]: the agent observed k-th
        rank = np.empty((B, n), dtype=np.int16)  # each agent's place in that order
        np.put_along_axis(rank, by_order, np.arange(n, dtype=np.int16)[None, :], axis=1)
        if self.prob_obs_enemy < 1.0:
            draws = uniform(seeds ^ _SHARE_SALT, key, n * m).reshape(B, n, m) < self.prob_obs_enemy
        else:
            draws = None  # every draw succeeds
        seeing = live[:, :, None] & sees  # only living agents are observed (and tag)
        tags = self.tags[sel]
        shared = self.shared[sel]  # [B, m, n]
        untagged = tags < 0
        by_rank = np.where(seeing, rank[:, :, None], np.int16(n))  # [B, n, m]
        tagger_rank = by_rank.min(axis=1)  # [B, m]; n: nobody sees it
        fresh = untagged & (tagger_rank < n)
        # Where an enemy is fresh, its tagger is the agent of rank `tagger_rank` (ranks are distinct).
        is_tagger = rank[:, :, None] == tagger_rank[:, None, :]  # [B, n, m]
        if draws is None:
            now_new = fresh[:, None, :] & (rank[:, :, None] >= tagger_rank[:, None, :])
            new_rows = True
        else:
            after = rank[:, :, None] > tagger_rank[:, None, :]
            now_new = fresh[:, None, :] & (is_tagger | (after & draws))
            # The state the next call starts from: the tagger and each other agent's draw.
            new_rows = (is_tagger | draws).transpose(0, 2, 1)  # [B, m, n]
        at_turn = np.where(untagged[:, None, :], now_new, shared.transpose(0, 2, 1))  # [B, n, m]
        self.shared[sel] = np.where(fresh[:, :, None], new_rows, shared)
        tagger = np.take_along_axis(by_order, np.minimum(tagger_rank, n - 1), axis=1)  # [B, m]
        self.tags[sel] = np.where(fresh, tagger, tags)
        unbroken = np.flip(np.logical_and.accumulate(np.flip(at_turn, axis=2), axis=2), axis=2)
        visible = (sees & at_turn) | self.fully_observable
        return live[:, :, None] & unbroken & enemy_alive[:, None, :] & visible

    def _available_v2(self, sel, pos, alive, to_enemy, enemy_dist) -> tuple[np.ndarray, np.ndarray]:
        """smacv2 `get_avail_agent_actions` and `get_true_avail_agent_actions`' attack part: the mask
        (`action_mask` off: every living target) and whether each slot's target is in shoot range.
        `to_enemy` and `enemy_dist` [B, n, m] are from each agent to each enemy."""
        u, n, m, L = self.units, self.n_agents, self.n_enemies, self.layout
        B = pos.shape[0]
        x0, x1, y0, y1 = self._bounds
        half = self.move_amount / 2
        me = pos[:, :n]
        live = alive[:, :n]
        avail = np.zeros((B, n, self.n_actions), dtype=bool)
        avail[:, :, 0] = ~live
        avail[:, :, 1] = live
        avail[:, :, 2] = live & (me.imag + half <= y1)
        avail[:, :, 3] = live & (me.imag - half >= y0)
        avail[:, :, 4] = live & (me.real + half <= x1)
        avail[:, :, 5] = live & (me.real - half >= x0)
        avail[:, :, N_NON_ATTACK_ACTIONS : L.attack_offset] = live[:, :, None]
        # Slot s: enemy s, or for a Medivac ally s (never another Medivac); slots past the last
        # enemy (terran, more agents than enemies) are a Medivac's only.
        fov, shoot = self.fov[sel], u.shoot[sel]
        valid = np.zeros((B, n, self._slots), dtype=bool)
        in_shot = np.zeros((B, n, self._slots), dtype=bool)
        valid[:, :, :m] = live[:, :, None] & alive[:, None, n:]
        in_shot[:, :, :m] = self._in_view(me, fov, to_enemy, enemy_dist, shoot)
        healer = u.healer[sel][:, :n]
        if healer.any():
            medic = healer[:, :, None]
            to_ally = pos[:, None, :n] - me[:, :, None]
            heals = live[:, :, None] & alive[:, None, :n] & ~healer[:, None, :]
            valid[:, :, :n] = np.where(medic, heals, valid[:, :, :n])
            valid[:, :, n:] &= ~medic
            reached = self._in_view(me, fov, to_ally, np.abs(to_ally), shoot)
            in_shot[:, :, :n] = np.where(medic, reached, in_shot[:, :, :n])
        can_shoot = valid & in_shot
        avail[:, :, L.attack_offset :] = can_shoot if self.action_mask else valid
        return avail, can_shoot

    def _state_v2(self, sel, pos, alive, health, shield, obs) -> np.ndarray:
        """smacv2 `get_state`: allies (health, cooldown or energy, position, shield, cone, type),
        enemies (health, position, shield, type), last actions, time step."""
        L, u, n = self.layout, self.units, self.n_agents
        B = pos.shape[0]
        if L.flags.obs_instead_of_state:
            return obs.reshape(B, -1).copy()
        centre = MAP_SIZE / 2
        rel = (pos - (centre + 1j * centre)) / MAP_SIZE
        onehot = self._type_onehot[sel]
        ally = np.zeros((B, n, L.ally_state_feats), dtype=np.float32)
        ally[..., 0] = health[:, :n]
        healer = u.healer[sel][:, :n]
        ally[..., 1] = np.where(healer, self.energy[sel][:, :n], self.cd[sel][:, :n]) / u.max_cd[sel][:, :n]
        ally[..., 2] = rel[:, :n].real
        ally[..., 3] = rel[:, :n].imag
        col = 4
        if L.ally_shield_bits:
            ally[..., col] = shield[:, :n]
            col += 1
        if L.n_fov_actions:
            ally[..., col] = self.fov[sel].real
            ally[..., col + 1] = self.fov[sel].imag
        ally[..., -L.unit_type_bits :] = onehot[:, :n]
        enemy = np.zeros((B, self.n_enemies, L.enemy_state_feats), dtype=np.float32)
        enemy[..., 0] = health[:, n:]
        enemy[..., 1] = rel[:, n:].real
        enemy[..., 2] = rel[:, n:].imag
        if L.enemy_shield_bits:
            enemy[..., 3] = shield[:, n:]
        enemy[..., -L.unit_type_bits :] = onehot[:, n:]
        parts = [(ally * alive[:, :n, None]).reshape(B, -1), (enemy * alive[:, n:, None]).reshape(B, -1)]
        if L.flags.state_last_action:
            parts.append(self._last_action_onehot(sel).reshape(B, -1))
        if L.flags.state_timestep_number:
            parts.append((self.steps[sel] / self.episode_limit).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1)


def _block(obs: np.ndarray, start: int, units: int, feats: int) -> np.ndarray:
    """The view [B, n, units, feats] of `obs` [B, n, size] from column `start` (one unit's features
    after another), to write the features in place."""
    block = obs[:, :, start : start + units * feats].reshape(obs.shape[0], obs.shape[1], units, feats)
    assert block.base is obs  # a view, not a copy
    return block


def _capability(map_name: str, given: dict[str, Any] | CapabilityConfig | None):
    """The race and capability configuration of a SMACv2 map: a scenario's own (SMACv2's example
    config) unless `given`; a 10gen map needs none (10 vs 10) but may take any."""
    if map_name in SCENARIOS:
        scenario = SCENARIOS[map_name]
        race, default = scenario.race, scenario_capability(scenario)
    else:
        race = GEN_MAPS[map_name]
        default = scenario_capability(
            next(s for s in SCENARIOS.values() if s.race == race and s.n_units == 10)
        )
    if given is None:
        return race, default
    config = given if isinstance(given, CapabilityConfig) else CapabilityConfig.from_smacv2(given, race)
    config.check(race)
    if map_name in SCENARIOS and (config.n_units, config.n_enemies) != (default.n_units, default.n_enemies):
        raise ValueError(
            f"capability_config.n_units/n_enemies: {map_name} is {default.n_units} vs {default.n_enemies}, "
            f"got {config.n_units} vs {config.n_enemies} (use the map {race.map_name} for other sizes)"
        )
    return race, config
