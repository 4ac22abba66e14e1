"""Where each feature sits in SMAC's observation and state vectors, for a map and a set of flags.

The lite engine writes observations with these offsets; scripted policies and tests read them back.
Layout (SMAC's `get_obs_agent`): move feats | enemy feats (n_enemies x nf_en) | ally feats
((n_agents-1) x nf_al) | own feats | [timestep]. See SPEC-SMAC.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from common.envs.maps import MapSpec

SIGHT_RANGE = 9.0
SHOOT_RANGE = 6.0
N_MOVE_ACTIONS = 4
N_NON_ATTACK_ACTIONS = 6  # no-op, stop, N, S, E, W
PATHING_FEATS = 8
HEIGHT_FEATS = 9


@dataclass(frozen=True)
class ObsFlags:
    """SMAC constructor flags that change observation or state shapes."""

    obs_all_health: bool = True
    obs_own_health: bool = True
    obs_last_action: bool = False
    obs_pathing_grid: bool = False
    obs_terrain_height: bool = False
    obs_instead_of_state: bool = False
    obs_timestep_number: bool = False
    state_last_action: bool = True
    state_timestep_number: bool = False
    # SMACv2 only (smacv2 starcraft2.py `StarCraft2Env.__init__`, its defaults); a SMAC map has none.
    obs_own_pos: bool = False  # own x / map_x, y / map_y in the own features
    conic_fov: bool = False  # sight is a cone the agent turns with `num_fov_actions` extra actions
    num_fov_actions: int = 12

    @classmethod
    def from_env_config(cls, env_cfg) -> ObsFlags:
        """The flags as the configuration's `env` section sets them."""
        return cls(**{name: getattr(env_cfg, name) for name in OBS_FLAG_NAMES})


OBS_FLAG_NAMES = tuple(f.name for f in fields(ObsFlags))
SMACV2_OBS_FLAGS = ("obs_own_pos", "conic_fov", "num_fov_actions")


@dataclass(frozen=True)
class ObsLayout:
    n_agents: int
    n_enemies: int
    n_actions: int
    unit_type_bits: int
    ally_shield_bits: int
    enemy_shield_bits: int
    flags: ObsFlags
    # SMACv2 (smacv2 starcraft2.py): the turn-the-cone actions between the moves and the attacks,
    # and the own-position and own-cone-direction features. Zero / False on SMAC maps.
    n_fov_actions: int = 0
    own_pos: bool = False

    @classmethod
    def for_map(cls, spec: MapSpec, flags: ObsFlags | None = None) -> ObsLayout:
        flags = flags or ObsFlags()
        if not spec.generated:
            return cls(
                n_agents=spec.n_agents,
                n_enemies=spec.n_enemies,
                n_actions=N_NON_ATTACK_ACTIONS + spec.n_enemies,
                unit_type_bits=spec.unit_type_bits,
                ally_shield_bits=int(spec.ally_has_shields),
                enemy_shield_bits=int(spec.enemy_has_shields),
                flags=flags,
            )
        n_fov = flags.num_fov_actions if flags.conic_fov else 0
        # smacv2 `__init__`: a terran_gen Medivac heals allies through the attack slots, so there
        # are max(n_agents, n_enemies) of them on terran maps; obs_all_health implies obs_own_health.
        slots = max(spec.n_enemies, spec.n_agents) if spec.ally_units[0].race == "T" else spec.n_enemies
        if flags.obs_all_health and not flags.obs_own_health:
            flags = replace(flags, obs_own_health=True)
        return cls(
            n_agents=spec.n_agents,
            n_enemies=spec.n_enemies,
            n_actions=N_NON_ATTACK_ACTIONS + n_fov + slots,
            unit_type_bits=spec.unit_type_bits,
            ally_shield_bits=int(spec.ally_has_shields),
            enemy_shield_bits=int(spec.enemy_has_shields),
            flags=flags,
            n_fov_actions=n_fov,
            own_pos=flags.obs_own_pos,
        )

    @property
    def attack_offset(self) -> int:
        """Index of the first attack (or heal) action: after no-op, stop, the moves and the cone."""
        return N_NON_ATTACK_ACTIONS + self.n_fov_actions

    @property
    def fov_feats(self) -> int:
        return 2 if self.n_fov_actions else 0

    # --- observation -------------------------------------------------------------------------
    @property
    def move_feats(self) -> int:
        f = self.flags
        return N_MOVE_ACTIONS + PATHING_FEATS * f.obs_pathing_grid + HEIGHT_FEATS * f.obs_terrain_height

    @property
    def enemy_feats(self) -> int:
        health = (1 + self.enemy_shield_bits) if self.flags.obs_all_health else 0
        return 4 + health + self.unit_type_bits

    @property
    def ally_feats(self) -> int:
        health = (1 + self.ally_shield_bits) if self.flags.obs_all_health else 0
        last = self.n_actions if self.flags.obs_last_action else 0
        return 4 + health + self.unit_type_bits + last

    @property
    def own_health_feats(self) -> int:
        return (1 + self.ally_shield_bits) if self.flags.obs_own_health else 0

    @property
    def own_type_offset(self) -> int:
        """Where the own unit-type one-hot starts: after health, shield, position and cone direction
        (smacv2 `get_obs_agent`'s own features)."""
        return self.own_offset + self.own_health_feats + 2 * self.own_pos + self.fov_feats

    @property
    def own_feats(self) -> int:
        return self.own_health_feats + 2 * self.own_pos + self.fov_feats + self.unit_type_bits

    @property
    def enemy_offset(self) -> int:
        return self.move_feats

    @property
    def ally_offset(self) -> int:
        return self.enemy_offset + self.n_enemies * self.enemy_feats

    @property
    def own_offset(self) -> int:
        return self.ally_offset + (self.n_agents - 1) * self.ally_feats

    @property
    def obs_size(self) -> int:
        return self.own_offset + self.own_feats + int(self.flags.obs_timestep_number)

    # Column indices inside one enemy (or ally) feature row.
    ATTACKABLE = 0  # for ally rows: visible
    DIST = 1
    DX = 2
    DY = 3
    HEALTH = 4  # only with obs_all_health

    def enemy_block(self, obs: np.ndarray) -> np.ndarray:
        """View of the enemy features of observations [..., obs_size] as [..., n_enemies, nf_en]."""
        block = obs[..., self.enemy_offset : self.ally_offset]
        return block.reshape(*obs.shape[:-1], self.n_enemies, self.enemy_feats)

    def ally_block(self, obs: np.ndarray) -> np.ndarray:
        block = obs[..., self.ally_offset : self.own_offset]
        return block.reshape(*obs.shape[:-1], self.n_agents - 1, self.ally_feats)

    # --- state ----------------------------------------------------------------------------------
    @property
    def ally_state_feats(self) -> int:
        return 4 + self.ally_shield_bits + self.fov_feats + self.unit_type_bits

    @property
    def enemy_state_feats(self) -> int:
        return 3 + self.enemy_shield_bits + self.unit_type_bits

    @property
    def state_size(self) -> int:
        f = self.flags
        if f.obs_instead_of_state:
            return self.obs_size * self.n_agents
        size = self.n_agents * self.ally_state_feats + self.n_enemies * self.enemy_state_feats
        size += self.n_agents * self.n_actions * f.state_last_action
        return size + int(f.state_timestep_number)
