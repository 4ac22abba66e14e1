"""The SMAC maps the lite world knows: unit rosters, episode limits, layouts.

Rosters, limits, unit-type orderings and `unit_type_bits` follow SMAC's map table; spawn points and the
walkable band follow SPEC-SMAC.md. Agents are ordered by unit type the way SMAC sorts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.envs.smacv2 import EPISODE_LIMIT, RACES, SCENARIOS, Race, Scenario
from common.envs.units import UNITS, UnitSpec

MAP_SIZE = 32.0


@dataclass(frozen=True)
class MapSpec:
    name: str
    allies: tuple[tuple[str, int], ...]  # (unit name, count) in agent-id order
    enemies: tuple[tuple[str, int], ...]
    episode_limit: int
    # Unit types in the order SMAC numbers them for the one-hot unit-type feature. A map with a
    # single unit type per side has no unit-type bits.
    type_order: tuple[str, ...] = ()
    ally_spawn: tuple[float, float] = (9.0, 16.0)
    enemy_spawn: tuple[float, float] = (23.0, 16.0)
    # Walkable rectangle (x_min, x_max, y_min, y_max); units are kept inside it.
    walkable: tuple[float, float, float, float] = (1.0, 31.0, 8.0, 24.0)
    # SMACv2: teams and start points are drawn every episode (common/envs/smacv2.py). The rosters
    # above then only give the sizes; the bounds an honest episode stays in cover every one-type
    # team of the race on either side (common/episode_checks.py).
    generated: bool = False

    @property
    def ally_units(self) -> list[UnitSpec]:
        return [UNITS[name] for name, count in self.allies for _ in range(count)]

    @property
    def enemy_units(self) -> list[UnitSpec]:
        return [UNITS[name] for name, count in self.enemies for _ in range(count)]

    @property
    def n_agents(self) -> int:
        return sum(c for _, c in self.allies)

    @property
    def n_enemies(self) -> int:
        return sum(c for _, c in self.enemies)

    @property
    def unit_type_bits(self) -> int:
        return len(self.type_order) if len(self.type_order) > 1 else 0

    @property
    def ally_has_shields(self) -> bool:
        return self.ally_units[0].race == "P"

    @property
    def enemy_has_shields(self) -> bool:
        return self.enemy_units[0].race == "P"

    def type_id(self, unit: UnitSpec) -> int:
        return self.type_order.index(unit.name) if self.unit_type_bits else 0


_SZ = ("stalker", "zealot")
_CSZ = ("colossus", "stalker", "zealot")
_MMM = ("marauder", "marine", "medivac")
_BANE = ("baneling", "zergling")
_WIDE = (1.0, 31.0, 3.0, 29.0)


def _marines(name: str, n: int, m: int, limit: int) -> MapSpec:
    return MapSpec(name, (("marine", n),), (("marine", m),), limit)


MAPS: dict[str, MapSpec] = {
    m.name: m
    for m in [
        _marines("3m", 3, 3, 60),
        _marines("8m", 8, 8, 120),
        _marines("25m", 25, 25, 150),
        _marines("5m_vs_6m", 5, 6, 70),
        _marines("8m_vs_9m", 8, 9, 120),
        _marines("10m_vs_11m", 10, 11, 150),
        _marines("27m_vs_30m", 27, 30, 180),
        MapSpec("2m_vs_1z", (("marine", 2),), (("zealot", 1),), 150),
        MapSpec(
            "MMM",
            (("marauder", 2), ("marine", 7), ("medivac", 1)),
            (("marauder", 2), ("marine", 7), ("medivac", 1)),
            150,
            _MMM,
        ),
        MapSpec(
            "MMM2",
            (("marauder", 2), ("marine", 7), ("medivac", 1)),
            (("marauder", 3), ("marine", 8), ("medivac", 1)),
            180,
            _MMM,
        ),
        MapSpec("2s3z", (("stalker", 2), ("zealot", 3)), (("stalker", 2), ("zealot", 3)), 120, _SZ),
        MapSpec("3s5z", (("stalker", 3), ("zealot", 5)), (("stalker", 3), ("zealot", 5)), 150, _SZ),
        MapSpec("3s5z_vs_3s6z", (("stalker", 3), ("zealot", 5)), (("stalker", 3), ("zealot", 6)), 170, _SZ),
        MapSpec(
            "1c3s5z",
            (("colossus", 1), ("stalker", 3), ("zealot", 5)),
            (("colossus", 1), ("stalker", 3), ("zealot", 5)),
            180,
            _CSZ,
        ),
        MapSpec("3s_vs_3z", (("stalker", 3),), (("zealot", 3),), 150),
        MapSpec("3s_vs_4z", (("stalker", 3),), (("zealot", 4),), 200),
        MapSpec("3s_vs_5z", (("stalker", 3),), (("zealot", 5),), 250),
        MapSpec(
            "6h_vs_8z",
            (("hydralisk", 6),),
            (("zealot", 8),),
            150,
            ally_spawn=(14.6, 9.5),
            enemy_spawn=(14.4, 16.8),
            walkable=_WIDE,
        ),
        MapSpec("corridor", (("zealot", 6),), (("zergling", 24),), 400, walkable=(1.0, 31.0, 10.0, 22.0)),
        MapSpec(
            "bane_vs_bane",
            (("baneling", 4), ("zergling", 20)),
            (("baneling", 4), ("zergling", 20)),
            200,
            _BANE,
        ),
        MapSpec("2c_vs_64zg", (("colossus", 2),), (("zergling", 64),), 400, walkable=_WIDE),
        MapSpec("so_many_baneling", (("zealot", 7),), (("baneling", 32),), 100, walkable=_WIDE),
    ]
}


# Nominal rosters of a generated map (see MapSpec.generated): only their sizes matter.
_BOUNDS_ALLY = {"protoss": "colossus", "terran": "medivac", "zerg": "hydralisk"}
_BOUNDS_ENEMY = {"protoss": "zealot", "terran": "medivac", "zerg": "baneling"}


def smacv2_spec(race: Race, n_units: int, n_enemies: int, name: str | None = None) -> MapSpec:
    """A SMACv2 battle of `race` on its 10gen map (32x32_flat, smacv2 smac_maps.py)."""
    return MapSpec(
        name or f"{race.name}_{n_units}_vs_{n_enemies}",
        ((_BOUNDS_ALLY[race.name], n_units),),
        ((_BOUNDS_ENEMY[race.name], n_enemies),),
        EPISODE_LIMIT,
        race.unit_types,
        ally_spawn=(8.0, 16.0),  # smacv2 `_create_new_team`'s spawn points without start_positions
        enemy_spawn=(24.0, 16.0),
        walkable=(1.0, 31.0, 1.0, 31.0),  # the flat 32x32 map, one cell of border
        generated=True,
    )


# SMACv2's scenarios (README table): protoss_5_vs_5 ... zerg_20_vs_23.
SMACV2_MAPS: dict[str, MapSpec] = {
    name: smacv2_spec(s.race, s.n_units, s.n_enemies) for name, s in SCENARIOS.items()
}
# SMACv2's maps, which take the sizes from a capability configuration (LiteBatchEnv's
# `capability_config`; 10 vs 10 without one, smac_maps.py's n_agents / n_enemies).
GEN_MAPS: dict[str, Race] = {race.map_name: race for race in RACES.values()}


def smacv2_scenario(name: str) -> Scenario | None:
    """The SMACv2 scenario called `name`, or None for a SMAC map."""
    return SCENARIOS.get(name)


def lite_map_names() -> list[str]:
    """Every map name the configuration accepts for the lite world: SMAC's and SMACv2's scenarios."""
    return [*MAPS, *SMACV2_MAPS]


def get_map(name: str) -> MapSpec:
    if name in MAPS:
        return MAPS[name]
    if name in SMACV2_MAPS:
        return SMACV2_MAPS[name]
    if name in GEN_MAPS:
        return smacv2_spec(GEN_MAPS[name], 10, 10, name)
    known = ", ".join(sorted(lite_map_names()))
    raise ValueError(f"unknown map '{name}' for the lite world (known maps: {known})")
