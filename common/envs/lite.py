"""The lite battle world: a numpy-vectorised re-simulation of SMAC battles.

`LiteBatchEnv` steps B independent battles held as arrays [B, units, ...]; nothing in a step loops in
Python over units or battles. `LiteStarCraft2Env` is SMAC's `StarCraft2Env` API on the same engine
with B = 1. Shapes, feature layouts, action rules, rewards and termination follow SMAC (see
SPEC-SMAC.md); the combat model is a simplification of SC2 documented in docs/world.md.

Positions are complex numbers (x + iy): pairwise offsets and distances then cost one subtraction and
one `abs` over [B, N, N], which is most of what makes the step cheap.
"""

from __future__ import annotations

import numpy as np

from common.envs.actions import validate_actions
from common.envs.layout import (
    N_NON_ATTACK_ACTIONS,
    OBS_FLAG_NAMES,
    SHOOT_RANGE,
    SIGHT_RANGE,
    SMACV2_OBS_FLAGS,
    ObsFlags,
    ObsLayout,
)
from common.envs.lite_rules import ACQUIRE_MARGIN as _ACQUIRE_MARGIN
from common.envs.lite_rules import CHASE_OVERSHOOT as _CHASE_OVERSHOOT
from common.envs.lite_rules import GOAL_REACHED as _GOAL_REACHED
from common.envs.lite_rules import MOVE_DIRECTIONS as _MOVE_DIRECTIONS
from common.envs.lite_rules import SEPARATION_PASSES, SEPARATION_STRENGTH
from common.envs.lite_rules import uniform as _uniform
from common.envs.maps import MAP_SIZE, MapSpec, get_map
from common.envs.protocol import BatchObservation, BatchStep, OneBattleView
from common.envs.smacv2_world import Smacv2Rules
from common.envs.units import (
    LOOPS_PER_SECOND,
    MEDIVAC_ENERGY_PER_HP,
    MEDIVAC_ENERGY_REGEN,
    MEDIVAC_MAX_ENERGY,
    MEDIVAC_START_ENERGY,
    SHIELD_REGEN_DELAY_S,
    SHIELD_REGEN_PER_S,
    ZERG_HEALTH_REGEN_PER_S,
    UnitSpec,
)

# SMAC constructor flags that only matter to the real game client (rendering, replays, the version
# to launch). The lite world accepts and ignores them so SMAC configs load unchanged.
_CLIENT_ONLY_FLAGS = {
    "game_version",
    "replay_dir",
    "replay_prefix",
    "window_size_x",
    "window_size_y",
    "heuristic_ai",
    "heuristic_rest",
    "debug",
}
_SPAWN_JITTER = 0.3
_FORMATION_GAP = 0.35


def _formation(count: int, facing: complex, spacing: float) -> np.ndarray:
    """Offsets of a loose block of `count` units: rows across the facing axis, columns behind."""
    rows = max(1, int(np.ceil(np.sqrt(count * 1.5))))
    rows = min(rows, count)
    side = facing * 1j
    idx = np.arange(count)
    row, col = idx % rows, idx // rows
    across = (row - (min(rows, count) - 1) / 2.0) * spacing
    return (across * side - col * spacing * facing).astype(np.complex64)


class _UnitTable:
    """Per-unit constants of one map, as arrays over the N = n_agents + n_enemies units."""

    def __init__(self, spec: MapSpec, step_mul: int):
        units: list[UnitSpec] = spec.ally_units + spec.enemy_units
        n = spec.n_agents
        self.n_units = len(units)
        f32 = np.float32

        def col(getter) -> np.ndarray:
            return np.array([getter(u) for u in units], dtype=f32)

        self.is_enemy = np.arange(self.n_units) >= n
        self.max_hp = col(lambda u: u.health)
        self.max_sh = col(lambda u: u.shield)
        self.safe_max_sh = np.where(self.max_sh > 0, self.max_sh, 1).astype(f32)
        self.radius = col(lambda u: u.radius)
        seconds_per_step = step_mul / LOOPS_PER_SECOND
        self.step_len = col(lambda u: u.speed * seconds_per_step)
        self.weapon_range = col(lambda u: u.weapon_range)
        self.cooldown = col(lambda u: u.cooldown_loops)
        self.max_cd = col(lambda u: u.max_cooldown)
        self.acquire = np.maximum(self.weapon_range, 4.0) + _ACQUIRE_MARGIN
        self.healer = np.array([u.healer for u in units])
        self.ground = np.array([not u.air for u in units])
        self.bio = np.array([u.bio for u in units])
        self.protoss = np.array([u.race == "P" for u in units])
        self.zerg = np.array([u.race == "Z" for u in units])
        self.type_id = np.array([spec.type_id(u) for u in units], dtype=np.int64)
        self.heal_per_step = col(lambda u: u.damage * seconds_per_step if u.healer else 0.0)
        self.splash_idx = np.flatnonzero([u.splash_radius > 0 for u in units])
        self.splash_radius = col(lambda u: u.splash_radius)[self.splash_idx]
        self.suicide_idx = np.flatnonzero([u.suicide_radius > 0 for u in units])
        self.suicide_radius = col(lambda u: u.suicide_radius)[self.suicide_idx]
        # Damage of one attack of unit a on unit t, before shields ([a, t]): raw (what shields absorb)
        # and after armour per hit (what health loses). Friendly fire does not exist.
        raw = np.zeros((self.n_units, self.n_units), dtype=f32)
        to_hp = np.zeros_like(raw)
        for a, ua in enumerate(units):
            for t, ut in enumerate(units):
                if self.is_enemy[a] == self.is_enemy[t] or ua.healer:
                    continue
                per_hit = ua.damage + ua.bonus_armored * ut.armored + ua.bonus_light * ut.light
                raw[a, t] = ua.hits * per_hit
                to_hp[a, t] = ua.hits * max(0.5, per_hit - ut.armor)
        self.raw_damage, self.hp_damage = raw, to_hp
        self.contact = (self.radius[:, None] + self.radius[None, :]).astype(f32)
        i, j = np.triu_indices(self.n_units, 1)
        self.tie_break = np.zeros((self.n_units, self.n_units), dtype=np.complex64)
        self.tie_break[i, j] = np.exp(2.4j * (i * self.n_units + j))
        self.tie_break[j, i] = -self.tie_break[i, j]
        self.separation = self.contact * (1 - np.eye(self.n_units, dtype=f32))
        self.reach = self.contact + self.weapon_range[:, None]  # centre distance at which a can hit t


class LiteBatchEnv:
    # What `common.snapshot` leaves out: the map's constants, made the same by every constructor.
    SNAPSHOT_SKIP = ("spec", "layout", "units", "_pairs")  # _pairs: scratch arrays
    """B independent SMAC battles on one map, stepped together with automatic reset.

    Battle b is seeded with `seed + b`, so it replays exactly like `LiteStarCraft2Env(seed=seed + b)`
    given the same actions.
    """

    def __new__(cls, map_name: str = "8m", *args, **kwargs):
        # A SMACv2 map (its teams drawn per episode) is the same interface on per-battle unit tables.
        if cls is LiteBatchEnv and get_map(map_name).generated:
            return super().__new__(Smacv2BatchEnv)
        return super().__new__(cls)

    def __init__(
        self,
        map_name: str = "8m",
        num_envs: int = 1,
        seed: int | None = 0,
        *,
        step_mul: int = 8,
        move_amount: float = 2,
        difficulty: str = "7",
        continuing_episode: bool = False,
        reward_sparse: bool = False,
        reward_only_positive: bool = True,
        reward_death_value: float = 10,
        reward_win: float = 200,
        reward_defeat: float = 0,
        reward_negative_scale: float = 0.5,
        reward_scale: bool = True,
        reward_scale_rate: float = 20,
        auto_reset: bool = True,
        **client_flags,
    ):
        # The flags that shape observations and states are ObsFlags' fields (SMAC's names, defaults).
        obs_flags = ObsFlags(**{k: client_flags.pop(k) for k in OBS_FLAG_NAMES if k in client_flags})
        unknown = set(client_flags) - _CLIENT_ONLY_FLAGS
        if unknown:
            raise TypeError(f"LiteBatchEnv: unknown SMAC flag(s): {', '.join(sorted(unknown))}")
        self.spec = self._map_spec(map_name)
        smacv2_only = [k for k in SMACV2_OBS_FLAGS if getattr(obs_flags, k) != getattr(ObsFlags(), k)]
        if smacv2_only and not self.spec.generated:
            flags = ", ".join(smacv2_only)
            raise TypeError(f"LiteBatchEnv: {flags}: SMACv2 flag(s), and {map_name} is a SMAC map")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if step_mul < 1:
            raise ValueError(f"step_mul must be >= 1, got {step_mul}")
        self.map_name = map_name
        self.num_envs = num_envs
        self.n_agents = self.spec.n_agents
        self.n_enemies = self.spec.n_enemies
        self.episode_limit = self.spec.episode_limit
        self.step_mul = step_mul
        self.move_amount = float(move_amount)
        self.difficulty = difficulty
        self.continuing_episode = continuing_episode
        self.reward_sparse = reward_sparse
        self.reward_only_positive = reward_only_positive
        self.reward_death_value = float(reward_death_value)
        self.reward_win = float(reward_win)
        self.reward_defeat = float(reward_defeat)
        self.reward_negative_scale = float(reward_negative_scale)
        self.reward_scale = reward_scale
        self.reward_scale_rate = float(reward_scale_rate)
        self.auto_reset = auto_reset
        self.layout = ObsLayout.for_map(
            self.spec,
            obs_flags,
        )
        self.n_actions = self.layout.n_actions
        self.units = _UnitTable(self.spec, step_mul)
        u = self.units
        n = self.n_agents
        self.max_reward = (
            self.n_enemies * self.reward_death_value
            + self.reward_win
            + float(u.max_hp[n:].sum() + u.max_sh[n:].sum())
        )
        self._is_mmm = bool(u.healer.any())
        self._fighter = ~u.healer
        x0, x1, y0, y1 = self.spec.walkable
        self._bounds = (np.float32(x0), np.float32(x1), np.float32(y0), np.float32(y1))
        self._others = np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int64)
        self._spawn = self._spawn_offsets()
        self._goal = np.complex64(complex(*self.spec.ally_spawn))
        self._type_onehot = np.eye(max(1, self.layout.unit_type_bits), dtype=np.float32)[u.type_id]

        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 62))
        self._seed = int(seed)
        self._battle_seeds = np.arange(num_envs, dtype=np.int64) + self._seed
        self._episodes = np.zeros(num_envs, dtype=np.int64)
        self.battles_won = 0
        self.battles_game = 0
        self.timeouts = 0
        self._allocate()
        self._started = False
        self._observation: BatchObservation | None = None

    def _map_spec(self, map_name: str) -> MapSpec:
        return get_map(map_name)

    # ------------------------------------------------------------------ public API
    def get_env_info(self) -> dict:
        return {
            "state_shape": self.layout.state_size,
            "obs_shape": self.layout.obs_size,
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def get_stats(self) -> dict:
        return {
            "battles_won": self.battles_won,
            "battles_game": self.battles_game,
            "battles_draw": self.timeouts,
            "win_rate": self.battles_won / self.battles_game if self.battles_game else 0.0,
            "timeouts": self.timeouts,
            "restarts": 0,
        }

    def seed(self) -> int:
        return self._seed

    def close(self) -> None:
        pass

    def reset(self) -> BatchObservation:
        """Start a fresh episode in every battle."""
        if self._started:
            self._episodes += 1
        self._started = True
        self._reset_rows(np.arange(self.num_envs))
        self._ended[:] = False
        self._observation = self._observe()
        return self._observation

    def observation(self) -> BatchObservation | None:
        return self._observation

    def step(self, actions: np.ndarray) -> BatchStep:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self._ended.any():
            b = int(np.flatnonzero(self._ended)[0])
            raise RuntimeError(f"battle {b} has ended; call reset() before stepping it again")
        actions = validate_actions(actions, self._observation.avail, self.n_actions)
        result = self._advance(actions)
        done = np.flatnonzero(result["terminated"])
        obs = self._observe()
        final = BatchObservation(obs.obs[done], obs.state[done], obs.avail[done])
        if done.size:
            if self.auto_reset:
                self._episodes[done] += 1
                self._reset_rows(done)
                fresh = self._observe(done)
                obs.obs[done], obs.state[done], obs.avail[done] = fresh.obs, fresh.state, fresh.avail
            else:
                self._ended[done] = True
        self._observation = obs
        return BatchStep(next=obs, done_index=done, final=final, **result)

    # ------------------------------------------------------------------ state
    def _allocate(self) -> None:
        B, N, n = self.num_envs, self.units.n_units, self.n_agents
        self.pos = np.zeros((B, N), dtype=np.complex64)
        self.hp = np.zeros((B, N), dtype=np.float32)
        self.sh = np.zeros((B, N), dtype=np.float32)
        self.cd = np.zeros((B, N), dtype=np.float32)  # game loops until the weapon is ready
        self.energy = np.zeros((B, N), dtype=np.float32)
        self.since_damage = np.zeros((B, N), dtype=np.float32)  # steps since last damaged
        self.target = np.full((B, N), -1, dtype=np.int64)  # enemy AI's current target
        self.last_action = np.zeros((B, n), dtype=np.int64)
        self.has_acted = np.zeros(B, dtype=bool)  # last_action one-hot is zero before the first step
        self.steps = np.zeros(B, dtype=np.int64)
        self._ended = np.zeros(B, dtype=bool)

    def _spawn_offsets(self) -> np.ndarray:
        spec, u = self.spec, self.units
        ally, enemy = complex(*spec.ally_spawn), complex(*spec.enemy_spawn)
        facing = (enemy - ally) / abs(enemy - ally)
        spacing = 2 * float(u.radius.max()) + _FORMATION_GAP
        allies = ally + _formation(self.n_agents, facing, spacing)
        enemies = enemy + _formation(self.n_enemies, -facing, spacing)
        return np.concatenate([allies, enemies]).astype(np.complex64)

    def _reset_rows(self, rows: np.ndarray) -> None:
        u, N = self.units, self.units.n_units
        noise = _uniform(self._battle_seeds[rows], self._episodes[rows], 2 * N).astype(np.float32)
        jitter = (noise[:, :N] - 0.5) + 1j * (noise[:, N:] - 0.5)
        self.pos[rows] = self._clamp(self._spawn[None, :] + (2 * _SPAWN_JITTER) * jitter)
        self.hp[rows] = u.max_hp
        self.sh[rows] = u.max_sh
        self.cd[rows] = 0.0
        self.energy[rows] = np.where(u.healer, MEDIVAC_START_ENERGY, 0.0)
        self.since_damage[rows] = 1e6
        self.target[rows] = -1
        self.last_action[rows] = 0
        self.has_acted[rows] = False
        self.steps[rows] = 0

    def _clamp(self, pos: np.ndarray) -> np.ndarray:
        x0, x1, y0, y1 = self._bounds
        out = np.empty(pos.shape, dtype=np.complex64)  # written part by part: no complex128 detour
        np.clip(pos.real, x0, x1, out=out.real)
        np.clip(pos.imag, y0, y1, out=out.imag)
        return out

    # ------------------------------------------------------------------ dynamics
    def _advance(self, actions: np.ndarray) -> dict:
        """Advance every battle by one agent step (step_mul game loops)."""
        u, n, N, B = self.units, self.n_agents, self.units.n_units, self.num_envs
        pos, hp = self.pos, self.hp
        alive = hp > 0
        prev_health = hp + self.sh
        rows = np.arange(B)[:, None]
        offset = pos[:, None, :] - pos[:, :, None]  # [b, i, j] = pos_j - pos_i
        dist = np.abs(offset)

        # Orders of the agents: a target to attack or heal, or a point to walk to.
        target = np.full((B, N), -1, dtype=np.int64)
        dest = pos.copy()
        walking = np.zeros((B, N), dtype=bool)
        acts = actions
        attack = acts >= N_NON_ATTACK_ACTIONS
        heal_base = np.where(u.healer[:n], 0, n)  # a medivac's "attack j" heals ally j
        target[:, :n] = np.where(attack, acts - N_NON_ATTACK_ACTIONS + heal_base, -1)
        moving = (acts >= 2) & (acts < N_NON_ATTACK_ACTIONS)
        step_dir = _MOVE_DIRECTIONS[np.clip(acts - 2, 0, 3)]
        dest[:, :n] = np.where(moving, pos[:, :n] + self.move_amount * step_dir, pos[:, :n])
        walking[:, :n] = moving
        # A stopped agent is idle, and idle units in SC2 fire at enemies already in weapon range.
        idle = (acts == 1) & ~u.healer[:n]
        in_reach = (dist[:, :n, n:] <= u.reach[:n, n:]) & alive[:, None, n:]
        nearest = np.argmin(np.where(in_reach, dist[:, :n, n:], np.inf), axis=2) + n
        target[:, :n] = np.where(idle & in_reach.any(axis=2), nearest, target[:, :n])
        self.target[:, :n] = target[:, :n]  # lets the enemy AI see who fights back

        self._enemy_orders(alive, dist, target, dest, walking)

        # Fire or close in.
        has_target = (target >= 0) & alive
        tgt = np.where(has_target, target, 0)
        tgt_dist = np.take_along_axis(dist, tgt[:, :, None], axis=2)[:, :, 0]
        reach = u.reach[np.arange(N)[None, :], tgt]
        in_range = has_target & (tgt_dist <= reach)
        steps_loops = np.float32(self.step_mul)
        fires = in_range & (self.cd <= steps_loops) & ~u.healer
        chase = has_target & ~in_range
        dest = np.where(chase, pos[rows, tgt], dest)
        stop_short = np.where(chase, np.maximum(reach - _CHASE_OVERSHOOT, 0), 0).astype(np.float32)
        walking |= chase

        # Damage (simultaneous): one attack per firing unit on its target, plus splash and suicides.
        flat_tgt = (rows * N + tgt)[fires]
        attacker = np.broadcast_to(np.arange(N), (B, N))[fires]
        raw = np.bincount(flat_tgt, u.raw_damage[attacker, tgt[fires]], minlength=B * N).reshape(B, N)
        to_hp = np.bincount(flat_tgt, u.hp_damage[attacker, tgt[fires]], minlength=B * N).reshape(B, N)
        raw, to_hp = raw.astype(np.float32), to_hp.astype(np.float32)
        if u.splash_idx.size:
            s = u.splash_idx
            around = dist[rows, tgt[:, s]]  # [B, k, N]: distances from each splasher's target
            hit = fires[:, s, None] & (around <= u.splash_radius[None, :, None]) & alive[:, None, :]
            hit &= np.arange(N)[None, None, :] != tgt[:, s, None]
            raw += (hit * u.raw_damage[s][None]).sum(axis=1)
            to_hp += (hit * u.hp_damage[s][None]).sum(axis=1)
        if u.suicide_idx.size:
            s = u.suicide_idx
            blast = fires[:, s, None] & (dist[:, s, :] <= u.suicide_radius[None, :, None]) & alive[:, None, :]
            raw += (blast * u.raw_damage[s][None]).sum(axis=1)
            to_hp += (blast * u.hp_damage[s][None]).sum(axis=1)
        heals = in_range & u.healer & (self.energy > 0)
        if heals.any():
            want = np.minimum(u.heal_per_step, self.energy / MEDIVAC_ENERGY_PER_HP) * heals
            healed = np.bincount((rows * N + tgt)[heals], want[heals], minlength=B * N).reshape(B, N)
            healed = np.minimum(healed.astype(np.float32), u.max_hp - hp) * alive
            self.energy -= want * MEDIVAC_ENERGY_PER_HP
            hp += healed

        blasted = np.zeros_like(fires)  # a baneling that blew up is dead whatever its health
        blasted[:, u.suicide_idx] = fires[:, u.suicide_idx]
        moves = (walking, dest, pos, stop_short)
        return self._settle(
            u, alive, hp, raw, to_hp, fires, blasted, steps_loops, moves, actions, prev_health
        )

    def _settle(
        self, u, alive, hp, raw, to_hp, fires, blasted, steps_loops, moves, actions, prev_health
    ) -> dict:
        """The end of a step that every kind of map shares: shields absorb, units die, weapons cool
        down, units walk and part, and the step is scored. `u` is the unit table (per unit, or per
        battle and unit), `blasted` [B, N] the units that blew themselves up, `moves` who walks
        where: (walking, destinations, positions, how far short of them to stop)."""
        walking, dest, pos, stop_short = moves
        absorbed = np.minimum(self.sh, raw)
        through = np.divide(raw - absorbed, raw, out=np.zeros_like(raw), where=raw > 0)
        hp -= to_hp * through
        self.sh -= absorbed
        hp[blasted] = 0
        died = alive & (hp <= 0)
        hp[died] = 0
        self.sh[died] = 0
        now_alive = hp > 0
        self.since_damage = np.where(raw > 0, 0, self.since_damage + 1)
        self.cd = np.where(fires, self.cd + u.cooldown, self.cd) - steps_loops
        np.maximum(self.cd, 0, out=self.cd)

        # Movement, then separation of overlapping ground units, then the walkable area.
        go = walking & now_alive & ~fires
        heading = dest - pos
        length = np.abs(heading)
        travel = np.minimum(u.step_len, np.maximum(length - stop_short, 0)) * go
        pos = pos + heading / np.maximum(length, 1e-6) * travel
        for _ in range(SEPARATION_PASSES):
            pos = self._clamp(self._separate(pos, now_alive))
        self.pos = pos

        self._regenerate(now_alive)
        self._after_deaths(now_alive)
        self.last_action[:] = actions
        self.has_acted[:] = True
        self.steps += 1
        return self._score(alive, now_alive, prev_health)

    def _after_deaths(self, alive: np.ndarray) -> None:
        """What a kind of map does once this step's dead are known (nothing here)."""

    def _enemy_orders(self, alive, dist, target, dest, walking) -> None:
        """The built-in AI: attack-move toward the allies' spawn, acquire the nearest ally in
        range, keep a target while it stays in range or fights back."""
        u, n, N = self.units, self.n_agents, self.units.n_units
        B = self.num_envs
        rows = np.arange(B)[:, None]
        edge_all = dist[:, n:, :] - u.contact[n:, :]  # [B, m, N]: edge distances from each enemy
        e_dist = dist[:, n:, :n]
        edge = edge_all[:, :, :n]
        acquire = u.acquire[n:, None]
        current = self.target[:, n:]
        cur = np.where(current >= 0, current, 0)
        cur_alive = (current >= 0) & alive[rows, cur]
        cur_edge = np.take_along_axis(edge_all, cur[:, :, None], axis=2)[:, :, 0]
        fights_back = self.target[rows, cur] == np.arange(n, N)[None, :]
        keep = cur_alive & ((cur_edge <= acquire[:, 0]) | (fights_back & (cur_edge <= SIGHT_RANGE)))

        # Healers pick the most damaged bio ally of their own side instead of an opponent.
        candidates = alive[:, None, :n] & (edge <= acquire)
        nearest = np.argmin(np.where(candidates, e_dist, np.inf), axis=2)
        new = np.where(candidates.any(axis=2), nearest, -1)
        chosen = np.where(keep, current, new)
        if u.healer[n:].any():
            h = np.flatnonzero(u.healer[n:]) + n
            friends = np.arange(n, N)
            patient_ok = alive[:, None, n:] & (u.bio[friends] & ~u.healer[friends])[None, None, :]
            hurt = self.hp[:, n:] < u.max_hp[n:]
            near = dist[:, h][:, :, n:] <= u.acquire[h][None, :, None] + 2
            options = patient_ok & hurt[:, None, :] & near
            frac = self.hp[:, n:] / u.max_hp[n:]
            patient = np.argmin(np.where(options, frac[:, None, :], np.inf), axis=2) + n
            chosen[:, h - n] = np.where(options.any(axis=2), patient, -1)
            # With nobody to heal, follow the closest fighting unit of the own side.
            fighter = alive[:, None, n:] & ~u.healer[None, None, n:]
            close = np.argmin(np.where(fighter, dist[:, h][:, :, n:], np.inf), axis=2) + n
            follow = np.where(fighter.any(axis=2), pos_of(self.pos, close), self._goal)
            dest[:, h] = follow
            walking[:, h] = options.any(axis=2) == 0
        self.target[:, n:] = chosen
        target[:, n:] = chosen
        idle = chosen < 0
        far = np.abs(self.pos[:, n:] - self._goal) > _GOAL_REACHED
        march = idle & far & ~u.healer[n:]
        dest[:, n:] = np.where(march, self._goal, dest[:, n:])
        walking[:, n:] |= march

    def _pair_buffers(self, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """(offset complex, dist, overlap, weight float32), each [b, u, u] for positions [b, u]."""
        b, n = shape
        buffers = getattr(self, "_pairs", None)
        if buffers is None or buffers[0].shape != (b, n, n):
            pair = (b, n, n)
            buffers = (np.empty(pair, np.complex64), *(np.empty(pair, np.float32) for _ in range(3)))
            self._pairs = buffers
        return buffers

    def _separate(self, pos: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Push overlapping ground units apart (half the overlap each), so units never stack."""
        u = self.units
        solid = (alive & u.ground).astype(np.float32)
        # [b, i, j] work arrays, kept between steps: fresh ones of this size cost a page fault per
        # page every step (the same operations in the same order, so the same numbers)
        offset, dist, overlap, weight = self._pair_buffers(pos.shape)
        np.subtract(pos[:, None, :], pos[:, :, None], out=offset)
        np.abs(offset, out=dist)
        np.subtract(u.separation, dist, out=overlap)  # separation's diagonal is 0: no self-push
        np.maximum(overlap, 0, out=overlap)
        overlap *= solid[:, :, None]
        overlap *= solid[:, None, :]
        coincident = (overlap > 0) & (dist < 1e-6)
        np.maximum(dist, 1e-6, out=weight)
        np.divide(SEPARATION_STRENGTH, weight, out=weight)
        np.multiply(overlap, weight, out=weight)
        np.multiply(weight, offset, out=offset)
        push = offset.sum(axis=2)  # [b, i]: i is pushed away from every j it overlaps
        stacked = np.flatnonzero(coincident.any(axis=(1, 2)))
        if stacked.size:
            # Units on the very same point part along a fixed direction (opposite for i and j); only
            # the battles that have such units (elsewhere the term is zero).
            part = coincident[stacked] * overlap[stacked] * SEPARATION_STRENGTH * u.tie_break
            push[stacked] += part.sum(axis=2)
        return pos - push

    def _regenerate(self, alive: np.ndarray) -> None:
        u = self.units
        seconds = self.step_mul / LOOPS_PER_SECOND
        recharging = alive & u.protoss & (self.since_damage >= SHIELD_REGEN_DELAY_S / seconds)
        self.sh = np.where(recharging, np.minimum(self.sh + SHIELD_REGEN_PER_S * seconds, u.max_sh), self.sh)
        regen = alive & u.zerg
        self.hp = np.where(regen, np.minimum(self.hp + ZERG_HEALTH_REGEN_PER_S * seconds, u.max_hp), self.hp)
        if u.healer.any():
            self.energy = np.where(
                alive & u.healer,
                np.minimum(self.energy + MEDIVAC_ENERGY_REGEN * seconds, MEDIVAC_MAX_ENERGY),
                self.energy,
            )

    def _score(self, was_alive: np.ndarray, alive: np.ndarray, prev_health: np.ndarray) -> dict:
        """SMAC's reward, episode end and statistics for the step just simulated."""
        n = self.n_agents
        health = self.hp + self.sh
        died = was_alive & ~alive
        lost_health = np.where(died, prev_health, (prev_health - health) * was_alive)
        delta_enemy = lost_health[:, n:].sum(axis=1)
        deaths_enemy = died[:, n:].sum(axis=1) * self.reward_death_value
        if self.reward_only_positive:
            reward = self._only_positive(delta_enemy + deaths_enemy)
        else:
            neg = self.reward_negative_scale
            delta_ally = lost_health[:, :n].sum(axis=1) * neg
            deaths_ally = died[:, :n].sum(axis=1) * self.reward_death_value * neg
            reward = delta_enemy + deaths_enemy - delta_ally - deaths_ally

        allies_alive = alive[:, :n].sum(axis=1)
        enemies_alive = alive[:, n:].sum(axis=1)
        lost = (allies_alive == 0) & (enemies_alive > 0)
        won = (allies_alive > 0) & (enemies_alive == 0)
        if self._is_mmm:  # a side left with only medivacs has lost
            lost |= (alive[:, :n] & self._fighter[..., :n]).sum(axis=1) == 0
            won = ~lost & (won | ((alive[:, n:] & self._fighter[..., n:]).sum(axis=1) == 0))
        draw = ~lost & ~won & (allies_alive == 0) & (enemies_alive == 0)
        game_over = lost | won | draw
        timeout = ~game_over & (self.steps >= self.episode_limit)
        if self.reward_sparse:
            reward = won.astype(np.float64) - lost
        else:
            reward = reward + won * self.reward_win + lost * self.reward_defeat
        if self.reward_scale:
            reward = reward / (self.max_reward / self.reward_scale_rate)

        terminated = game_over | timeout
        self.battles_game += int(terminated.sum())
        self.battles_won += int(won.sum())
        self.timeouts += int(timeout.sum())
        return {
            "reward": reward.astype(np.float32),
            "terminated": terminated,
            "battle_won": won,
            "episode_limit": timeout,
            "dead_allies": n - allies_alive,
            "dead_enemies": self.n_enemies - enemies_alive,
        }

    @staticmethod
    def _only_positive(reward: np.ndarray) -> np.ndarray:
        """SMAC's `reward_only_positive`: the absolute value (regeneration counts as damage)."""
        return np.abs(reward)

    # ------------------------------------------------------------------ observations
    def _observe(self, rows: np.ndarray | None = None) -> BatchObservation:
        """Observations, state and available actions of all battles (or of `rows`)."""
        sel = slice(None) if rows is None else rows
        pos, hp, sh = self.pos[sel], self.hp[sel], self.sh[sel]
        L, u, n = self.layout, self.units, self.n_agents
        B = pos.shape[0]
        f32 = np.float32
        alive = hp > 0
        offset = pos[:, None, :] - pos[:, :, None]
        dist = np.abs(offset)

        avail = self._available(pos, alive, dist)

        health = hp / u.max_hp
        shield = sh / u.safe_max_sh
        me_alive = alive[:, :n, None]
        obs = np.zeros((B, n, L.obs_size), dtype=f32)
        obs[:, :, :4] = avail[:, :, 2:6]
        if L.flags.obs_pathing_grid or L.flags.obs_terrain_height:
            obs[:, :, 4 : L.move_feats] = self._surroundings(pos[:, :n]) * me_alive

        # Enemies as seen by each agent.
        e_off, e_dist = offset[:, :n, n:], dist[:, :n, n:]
        seen = me_alive & alive[:, None, n:] & (e_dist < SIGHT_RANGE)
        ef = np.zeros((B, n, self.n_enemies, L.enemy_feats), dtype=f32)
        ef[..., 0] = avail[:, :, N_NON_ATTACK_ACTIONS:]
        ef[..., 1] = e_dist / SIGHT_RANGE
        ef[..., 2] = e_off.real / SIGHT_RANGE
        ef[..., 3] = e_off.imag / SIGHT_RANGE
        col = 4
        if L.flags.obs_all_health:
            ef[..., col] = health[:, None, n:]
            col += 1
            if L.enemy_shield_bits:
                ef[..., col] = shield[:, None, n:]
                col += 1
        if L.unit_type_bits:
            ef[..., col : col + L.unit_type_bits] = self._type_onehot[n:]
        ef *= seen[..., None]
        obs[:, :, L.enemy_offset : L.ally_offset] = ef.reshape(B, n, -1)

        # Other allies, in id order skipping self.
        if n > 1:
            others = self._others
            a_off = offset[:, np.arange(n)[:, None], others]
            a_dist = np.abs(a_off)
            seen = me_alive & alive[:, others] & (a_dist < SIGHT_RANGE)
            af = np.zeros((B, n, n - 1, L.ally_feats), dtype=f32)
            af[..., 0] = 1
            af[..., 1] = a_dist / SIGHT_RANGE
            af[..., 2] = a_off.real / SIGHT_RANGE
            af[..., 3] = a_off.imag / SIGHT_RANGE
            col = 4
            if L.flags.obs_all_health:
                af[..., col] = health[:, others]
                col += 1
                if L.ally_shield_bits:
                    af[..., col] = shield[:, others]
                    col += 1
            if L.unit_type_bits:
                af[..., col : col + L.unit_type_bits] = self._type_onehot[others]
                col += L.unit_type_bits
            if L.flags.obs_last_action:
                last = self._last_action_onehot(sel)
                af[..., col:] = last[:, others]
            af *= seen[..., None]
            obs[:, :, L.ally_offset : L.own_offset] = af.reshape(B, n, -1)

        col = L.own_offset
        if L.flags.obs_own_health:
            obs[:, :, col] = health[:, :n]
            col += 1
            if L.ally_shield_bits:
                obs[:, :, col] = shield[:, :n]
                col += 1
        if L.unit_type_bits:
            obs[:, :, col : col + L.unit_type_bits] = self._type_onehot[:n]
        obs *= me_alive
        if L.flags.obs_timestep_number:
            obs[:, :, -1] = (self.steps[sel] / self.episode_limit)[:, None]

        state = self._state(sel, pos, alive, health, shield, obs)
        return BatchObservation(obs, state, avail)

    def _available(self, pos: np.ndarray, alive: np.ndarray, dist: np.ndarray) -> np.ndarray:
        u, n = self.units, self.n_agents
        B = pos.shape[0]
        x0, x1, y0, y1 = self._bounds
        half = self.move_amount / 2
        me = pos[:, :n]
        avail = np.zeros((B, n, self.n_actions), dtype=bool)
        live = alive[:, :n]
        avail[:, :, 0] = ~live
        avail[:, :, 1] = live
        avail[:, :, 2] = live & (me.imag + half <= y1)
        avail[:, :, 3] = live & (me.imag - half >= y0)
        avail[:, :, 4] = live & (me.real + half <= x1)
        avail[:, :, 5] = live & (me.real - half >= x0)
        in_shot = dist[:, :n, n:] <= SHOOT_RANGE
        attack = live[:, :, None] & alive[:, None, n:] & in_shot
        if u.healer[:n].any():
            # A medivac's attack slots heal allies (never another medivac) instead.
            h = np.flatnonzero(u.healer[:n])
            k = min(n, self.n_enemies)
            heal = live[:, h, None] & alive[:, None, :k] & ~u.healer[None, None, :k]
            heal &= dist[:, h][:, :, :k] <= SHOOT_RANGE
            attack[:, h] = False
            attack[:, h, :k] = heal
        avail[:, :, N_NON_ATTACK_ACTIONS:] = attack
        return avail

    def _surroundings(self, me: np.ndarray) -> np.ndarray:
        """Pathing (8 neighbouring points, 1 = walkable) and flat terrain height (9 values)."""
        f = self.layout.flags
        x0, x1, y0, y1 = self._bounds
        ring = np.exp(1j * np.pi / 4 * np.arange(8)) * self.move_amount
        parts = []
        if f.obs_pathing_grid:
            p = me[..., None] + ring
            ok = (p.real >= x0) & (p.real <= x1) & (p.imag >= y0) & (p.imag <= y1)
            parts.append(ok.astype(np.float32))
        if f.obs_terrain_height:
            parts.append(np.full(me.shape + (9,), 0.5, dtype=np.float32))
        return np.concatenate(parts, axis=-1)

    def _last_action_onehot(self, sel) -> np.ndarray:
        last_action = self.last_action[sel]
        onehot = np.zeros(last_action.shape + (self.n_actions,), dtype=np.float32)
        acted = self.has_acted[sel].astype(np.float32)  # all zero before the first step
        np.put_along_axis(onehot, last_action[..., None], acted[:, None, None], axis=2)
        return onehot

    def _state(self, sel, pos, alive, health, shield, obs) -> np.ndarray:
        L, u, n = self.layout, self.units, self.n_agents
        B = pos.shape[0]
        if L.flags.obs_instead_of_state:
            return obs.reshape(B, -1).copy()
        centre = MAP_SIZE / 2
        rel = (pos - (centre + 1j * centre)) / MAP_SIZE
        parts = []
        ally = np.zeros((B, n, L.ally_state_feats), dtype=np.float32)
        ally[..., 0] = health[:, :n]
        cooldown = np.where(u.healer[:n], self.energy[sel][:, :n], self.cd[sel][:, :n])
        ally[..., 1] = cooldown / u.max_cd[:n]
        ally[..., 2] = rel[:, :n].real
        ally[..., 3] = rel[:, :n].imag
        col = 4
        if L.ally_shield_bits:
            ally[..., col] = shield[:, :n]
            col += 1
        if L.unit_type_bits:
            ally[..., col:] = self._type_onehot[:n]
        parts.append((ally * alive[:, :n, None]).reshape(B, -1))
        enemy = np.zeros((B, self.n_enemies, L.enemy_state_feats), dtype=np.float32)
        enemy[..., 0] = health[:, n:]
        enemy[..., 1] = rel[:, n:].real
        enemy[..., 2] = rel[:, n:].imag
        col = 3
        if L.enemy_shield_bits:
            enemy[..., col] = shield[:, n:]
            col += 1
        if L.unit_type_bits:
            enemy[..., col:] = self._type_onehot[n:]
        parts.append((enemy * alive[:, n:, None]).reshape(B, -1))
        if L.flags.state_last_action:
            parts.append(self._last_action_onehot(sel).reshape(B, -1))
        if L.flags.state_timestep_number:
            parts.append((self.steps[sel] / self.episode_limit).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1)


class Smacv2BatchEnv(Smacv2Rules, LiteBatchEnv):
    """B SMACv2 battles: what `LiteBatchEnv(map_name)` builds for a SMACv2 map (see
    common/envs/smacv2_world.py). Battle b is seeded with `seed + b`; its teams and start points of
    episode k are a pure function of (seed + b, k)."""


def pos_of(pos: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions [B, k] of units `index` [B, k] in each battle."""
    return np.take_along_axis(pos, index, axis=1)


class LiteStarCraft2Env(OneBattleView):
    """SMAC's `StarCraft2Env` API over the lite engine with one battle (B = 1).

    Same constructor flags and defaults as SMAC; after an episode ends, call `reset()`.
    """

    def __init__(self, map_name: str = "8m", seed: int | None = None, **smac_flags):
        self._engine = LiteBatchEnv(map_name, num_envs=1, seed=seed, auto_reset=False, **smac_flags)
        self.map_name = map_name
        self.n_agents = self._engine.n_agents
        self.n_enemies = self._engine.n_enemies
        self.episode_limit = self._engine.episode_limit
        self.n_actions = self._engine.n_actions
        self.continuing_episode = self._engine.continuing_episode
        self._episode_steps = 0

    @property
    def layout(self) -> ObsLayout:
        return self._engine.layout

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        self._engine.reset()
        self._episode_steps = 0
        return self.get_obs(), self.get_state()

    def step(self, actions) -> tuple[float, bool, dict]:
        acts = np.asarray(actions)
        if hasattr(actions, "cpu"):  # a torch tensor, as PyMARL passes
            acts = actions.cpu().numpy()
        result = self._engine.step(acts.reshape(1, -1) if acts.ndim == 1 else acts)
        self._episode_steps += 1
        info = {
            "battle_won": bool(result.battle_won[0]),
            "dead_allies": int(result.dead_allies[0]),
            "dead_enemies": int(result.dead_enemies[0]),
        }
        if result.episode_limit[0] and self.continuing_episode:
            info["episode_limit"] = True
        return float(result.reward[0]), bool(result.terminated[0]), info

    def render(self, mode: str = "human") -> None:
        raise NotImplementedError("the lite world has no renderer")

    def save_replay(self) -> None:
        raise NotImplementedError("the lite world writes no SC2 replays")
