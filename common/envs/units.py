"""Unit statistics for the lite world (SC2 4.10 values as published; see SPEC-SMAC.md).

Times are in game loops (16 per game second at normal speed; one agent step is `step_mul` = 8 loops),
distances in map cells, speeds in cells per game second.
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPS_PER_SECOND = 16.0


@dataclass(frozen=True)
class UnitSpec:
    name: str
    race: str  # "T", "P" or "Z"
    health: float
    shield: float
    armor: float
    radius: float
    speed: float  # cells per game second
    damage: float  # per hit; for the medivac, HP healed per game second
    hits: int  # hits per attack (zealot and colossus strike twice)
    bonus_armored: float = 0.0
    bonus_light: float = 0.0
    cooldown_s: float = 1.0  # game seconds between attacks
    weapon_range: float = 0.1  # edge to edge
    armored: bool = False
    light: bool = False
    bio: bool = False
    air: bool = False
    healer: bool = False  # medivac: heals bio allies instead of attacking
    splash_radius: float = 0.0  # colossus line splash, approximated by a disc around the target
    suicide_radius: float = 0.0  # baneling: explodes on contact, hitting everything within this radius
    max_cooldown: float = 1.0  # SMAC's normaliser for weapon cooldown in the state (game loops)

    @property
    def cooldown_loops(self) -> float:
        return self.cooldown_s * LOOPS_PER_SECOND


UNITS: dict[str, UnitSpec] = {
    u.name: u
    for u in [
        UnitSpec("marine", "T", 45, 0, 0, 0.375, 2.25, 6, 1, cooldown_s=0.86, weapon_range=5.0,
                 light=True, bio=True, max_cooldown=15),
        UnitSpec("marauder", "T", 125, 0, 1, 0.5625, 2.25, 10, 1, bonus_armored=10, cooldown_s=1.5,
                 weapon_range=6.0, armored=True, bio=True, max_cooldown=25),
        UnitSpec("medivac", "T", 150, 0, 1, 0.75, 2.75, 9, 1, weapon_range=4.0, armored=True, air=True,
                 healer=True, max_cooldown=200),
        UnitSpec("stalker", "P", 80, 80, 1, 0.625, 2.95, 13, 1, bonus_armored=5, cooldown_s=1.87,
                 weapon_range=6.0, armored=True, max_cooldown=35),
        UnitSpec("zealot", "P", 100, 50, 1, 0.5, 2.25, 8, 2, cooldown_s=1.2, weapon_range=0.1, light=True,
                 bio=True, max_cooldown=22),
        UnitSpec("colossus", "P", 200, 150, 1, 1.0, 2.25, 10, 2, bonus_light=5, cooldown_s=1.5,
                 weapon_range=7.0, armored=True, splash_radius=1.0, max_cooldown=24),
        UnitSpec("hydralisk", "Z", 80, 0, 0, 0.625, 2.25, 12, 1, cooldown_s=0.83, weapon_range=5.0,
                 light=True, bio=True, max_cooldown=10),
        UnitSpec("zergling", "Z", 35, 0, 0, 0.375, 2.95, 5, 1, cooldown_s=0.7, weapon_range=0.1, light=True,
                 bio=True, max_cooldown=11),
        UnitSpec("baneling", "Z", 30, 0, 0, 0.375, 2.5, 16, 1, bonus_light=19, cooldown_s=1.0,
                 weapon_range=0.1, bio=True, suicide_radius=2.2, max_cooldown=1),
    ]
}

# Medivac: energy per HP healed, energy cap, start and regeneration per game second.
MEDIVAC_ENERGY_PER_HP = 1.0 / 3.0
MEDIVAC_MAX_ENERGY = 200.0
MEDIVAC_START_ENERGY = 50.0
MEDIVAC_ENERGY_REGEN = 0.5625
# Protoss shields regenerate after this long without taking damage, at this rate.
SHIELD_REGEN_DELAY_S = 10.0
SHIELD_REGEN_PER_S = 2.0
ZERG_HEALTH_REGEN_PER_S = 0.27
