"""SMACv2's scenarios on the lite world: races, capability configurations and their distributions.

A SMACv2 battle (github oxwhirl/smacv2) is SMAC's API on one of three maps, `10gen_protoss`,
`10gen_terran`, `10gen_zerg`, with the teams and start positions drawn anew every episode from a
*capability configuration*: the dict `StarCraftCapabilityEnvWrapper(capability_config=...)` takes.
`CapabilityConfig` is that dict, typed; `to_smacv2()` / `from_smacv2()` convert both ways.

The draws follow smacv2/env/starcraft2/distributions.py (`WeightedTeamsDistribution`,
`ReflectPositionDistribution`, `SurroundedPositionDistribution`,
`SurroundedAndReflectPositionDistribution`) with one seeded generator per (battle seed, episode),
so a battle replays exactly from its seed. "fixed" turns a draw off: the same team (counts in
proportion to the weights) or SMACv2's own non-random spawn points every episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --- races and scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Race:
    """What a `10gen_{race}` map knows: its unit types in SMACv2's one-hot order, the default
    generation weights and the types that may not make up a whole team."""

    name: str  # "protoss" | "terran" | "zerg"
    code: str  # SC2's race letter
    # smacv2 starcraft2.py `get_unit_type_id`: protoss_gen stalker 0, zealot 1, colossus 2; terran_gen
    # marine 0, marauder 1, medivac 2; zerg_gen zergling 0, hydralisk 1, baneling 2.
    unit_types: tuple[str, str, str]
    # smacv2/examples/configs/sc2_gen_{race}.yaml `team_gen.weights` (README's table).
    weights: tuple[float, float, float]
    # sc2_gen_{terran,zerg}.yaml `exception_unit_types`; protoss has none.
    exceptions: tuple[str, ...] = ()

    @property
    def map_name(self) -> str:
        return f"10gen_{self.name}"


RACES: dict[str, Race] = {
    r.name: r
    for r in (
        Race("protoss", "P", ("stalker", "zealot", "colossus"), (0.45, 0.45, 0.1)),
        Race("terran", "T", ("marine", "marauder", "medivac"), (0.45, 0.45, 0.1), ("medivac",)),
        Race("zerg", "Z", ("zergling", "hydralisk", "baneling"), (0.45, 0.45, 0.1), ("baneling",)),
    )
}

# smacv2/env/starcraft2/maps/smac_maps.py: every 10gen map has "limit": 200 and "unit_type_bits": 3,
# on the 32x32_flat SC2 map.
EPISODE_LIMIT = 200
UNIT_TYPE_BITS = 3
MAP_X = MAP_Y = 32
# SMACv2's README scenario table: `{race}_{n_units}_vs_{n_enemies}`.
SIZES: tuple[tuple[int, int], ...] = ((5, 5), (10, 10), (20, 20), (10, 11), (20, 23))


@dataclass(frozen=True)
class Scenario:
    race: Race
    n_units: int
    n_enemies: int

    @property
    def name(self) -> str:
        return f"{self.race.name}_{self.n_units}_vs_{self.n_enemies}"


SCENARIOS: dict[str, Scenario] = {
    s.name: s for race in RACES.values() for n, m in SIZES for s in [Scenario(race, n, m)]
}

# smacv2 starcraft2.py `unit_sight_range` and `unit_shoot_range` (with use_unit_ranges=True); the
# shoot range is then max(this, min_attack_range). Without use_unit_ranges: 9 and 6 for every unit.
SIGHT_RANGE = {
    "stalker": 10, "zealot": 9, "colossus": 10, "zergling": 8, "baneling": 8,
    "hydralisk": 9, "marine": 9, "marauder": 10, "medivac": 11,
}  # fmt: skip
SHOOT_RANGE = {
    "stalker": 6, "zealot": 0.1, "colossus": 7, "zergling": 0.1, "baneling": 0.25,
    "hydralisk": 5, "marine": 5, "marauder": 6, "medivac": 4,
}  # fmt: skip
DEFAULT_SIGHT_RANGE, DEFAULT_SHOOT_RANGE = 9.0, 6.0


# --- the capability configuration ------------------------------------------------------------

TEAM_DISTRIBUTIONS = ("weighted_teams", "fixed")
POSITION_DISTRIBUTIONS = ("surrounded_and_reflect", "surrounded", "reflect", "fixed")


@dataclass(frozen=True)
class TeamGen:
    """`capability_config["team_gen"]`: weighted teams (SMACv2) or one fixed team."""

    dist_type: str = "weighted_teams"
    unit_types: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    exception_unit_types: tuple[str, ...] = ()
    observe: bool = True  # teammates' unit types are in the observation (SMACv2's configs: True)


@dataclass(frozen=True)
class StartPositions:
    """`capability_config["start_positions"]`."""

    dist_type: str = "surrounded_and_reflect"
    p: float = 0.5  # probability of "reflect" (SMACv2 draws u and surrounds when u > p)
    map_x: int = MAP_X
    map_y: int = MAP_Y


@dataclass(frozen=True)
class CapabilityConfig:
    n_units: int
    n_enemies: int
    team_gen: TeamGen = field(default_factory=TeamGen)
    start_positions: StartPositions = field(default_factory=StartPositions)

    def to_smacv2(self) -> dict[str, Any]:
        """The dict `StarCraftCapabilityEnvWrapper(capability_config=...)` takes (JSON-ready)."""
        team: dict[str, Any] = {
            "dist_type": self.team_gen.dist_type,
            "unit_types": list(self.team_gen.unit_types),
            "weights": list(self.team_gen.weights),
            "observe": self.team_gen.observe,
        }
        if self.team_gen.exception_unit_types:
            team["exception_unit_types"] = list(self.team_gen.exception_unit_types)
        sp = self.start_positions
        return {
            "n_units": self.n_units,
            "n_enemies": self.n_enemies,
            "team_gen": team,
            "start_positions": {"dist_type": sp.dist_type, "p": sp.p, "map_x": sp.map_x, "map_y": sp.map_y},
        }

    @classmethod
    def from_smacv2(cls, data: dict[str, Any], race: Race) -> CapabilityConfig:
        """Parse SMACv2's dict, checked against `race`; ValueError names the first bad key."""
        unknown = set(data) - {"n_units", "n_enemies", "team_gen", "start_positions"}
        if unknown:
            raise ValueError(f"capability_config: unsupported key(s) {', '.join(sorted(unknown))}")
        # Without a team_gen entry: the race's example one (sc2_gen_{race}.yaml), exceptions included.
        team = dict(data.get("team_gen") or {"exception_unit_types": list(race.exceptions)})
        sp = dict(data.get("start_positions") or {})
        config = cls(
            n_units=int(data.get("n_units", 0)),
            n_enemies=int(data.get("n_enemies", 0)),
            team_gen=TeamGen(
                dist_type=str(team.get("dist_type", "weighted_teams")),
                unit_types=tuple(team.get("unit_types", race.unit_types)),
                weights=tuple(float(w) for w in team.get("weights", race.weights)),
                exception_unit_types=tuple(team.get("exception_unit_types", ())),
                observe=bool(team.get("observe", True)),
            ),
            start_positions=StartPositions(
                dist_type=str(sp.get("dist_type", "surrounded_and_reflect")),
                p=float(sp.get("p", 0.5)),
                map_x=int(sp.get("map_x", MAP_X)),
                map_y=int(sp.get("map_y", MAP_Y)),
            ),
        )
        config.check(race)
        return config

    def check(self, race: Race) -> None:
        """ValueError naming the first key that SMACv2 or the lite world cannot run."""
        tg, sp = self.team_gen, self.start_positions
        key = "capability_config"
        if self.n_units < 1 or self.n_enemies < 1:
            raise ValueError(
                f"{key}.n_units/n_enemies: must be at least 1, got {self.n_units}/{self.n_enemies}"
            )
        if tg.dist_type not in TEAM_DISTRIBUTIONS:
            raise ValueError(f"{key}.team_gen.dist_type: expected one of {', '.join(TEAM_DISTRIBUTIONS)}, "
                             f"got {tg.dist_type!r}")  # fmt: skip
        strangers = [u for u in (*tg.unit_types, *tg.exception_unit_types) if u not in race.unit_types]
        if strangers or not tg.unit_types:
            raise ValueError(f"{key}.team_gen.unit_types: {race.map_name} has {', '.join(race.unit_types)}, "
                             f"got {list(tg.unit_types)}")  # fmt: skip
        weights = np.asarray(tg.weights, dtype=float)
        if len(weights) != len(tg.unit_types) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"{key}.team_gen.weights: one non-negative weight per unit type, summing to 1, "
                             f"got {list(tg.weights)}")  # fmt: skip
        if all(w == 0 or u in tg.exception_unit_types for u, w in zip(tg.unit_types, weights, strict=True)):
            raise ValueError(f"{key}.team_gen.exception_unit_types: no team can be drawn")
        if sp.dist_type not in POSITION_DISTRIBUTIONS:
            raise ValueError(f"{key}.start_positions.dist_type: expected one of "
                             f"{', '.join(POSITION_DISTRIBUTIONS)}, got {sp.dist_type!r}")  # fmt: skip
        if not 0.0 <= sp.p <= 1.0:
            raise ValueError(f"{key}.start_positions.p: must be in [0, 1], got {sp.p}")
        if (sp.map_x, sp.map_y) != (MAP_X, MAP_Y):
            raise ValueError(f"{key}.start_positions.map_x/map_y: the 10gen maps are {MAP_X}x{MAP_Y}, "
                             f"got {sp.map_x}x{sp.map_y}")  # fmt: skip


def scenario_capability(
    scenario: Scenario,
    team_gen: str = "weighted_teams",
    start_positions: str = "surrounded_and_reflect",
    p: float = 0.5,
) -> CapabilityConfig:
    """The capability configuration of SMACv2's example config for `scenario` (sc2_gen_{race}.yaml
    with its n_units / n_enemies), with the two distributions chosen."""
    race = scenario.race
    config = CapabilityConfig(
        n_units=scenario.n_units,
        n_enemies=scenario.n_enemies,
        team_gen=TeamGen(team_gen, race.unit_types, race.weights, race.exceptions),
        start_positions=StartPositions(start_positions, p),
    )
    config.check(race)
    return config


# --- the draws --------------------------------------------------------------------------------


def episode_rng(seed: int, episode: int) -> np.random.Generator:
    """The generator of one battle's episode: a pure function of (seed, episode)."""
    return np.random.default_rng([int(seed) & (2**63 - 1), int(episode), 0x5AC2])


def draw_teams(config: CapabilityConfig, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(ally team, enemy team) as `WeightedTeamsDistribution.generate` makes them: n_units drawn with
    the weights and shuffled, redrawn while made only of exception types; the enemies are the same
    team, cut to n_enemies or extended by a second draw. "fixed": counts in proportion to the
    weights (largest remainder), in unit-type order, every episode."""
    tg = config.team_gen
    n, m = config.n_units, config.n_enemies
    if tg.dist_type == "fixed":
        team = _fixed_team(tg, n)
        enemies = team[:m] if m <= n else team + _fixed_team(tg, m - n)
        return team, enemies
    team = _weighted_team(tg, n, rng)
    enemies = team[:m] if m <= n else team + _weighted_team(tg, m - n, rng)
    return team, enemies


def _weighted_team(tg: TeamGen, size: int, rng: np.random.Generator) -> list[str]:
    units = tg.unit_types
    exceptions = set(tg.exception_unit_types)
    while True:
        # Drawing indices takes the same numbers from `rng` as drawing from the array of names.
        team = [units[i] for i in rng.choice(len(units), size=size, p=np.asarray(tg.weights))]
        rng.shuffle(team)
        if not all(u in exceptions for u in team):
            return team


def _fixed_team(tg: TeamGen, size: int) -> list[str]:
    shares = np.asarray(tg.weights) * size
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: size - counts.sum()]:
        counts[i] += 1
    team = [u for u, c in zip(tg.unit_types, counts, strict=True) for _ in range(c)]
    if all(u in tg.exception_unit_types for u in team):  # e.g. one unit whose share went to a medivac
        team[0] = next(u for u in tg.unit_types if u not in tg.exception_unit_types)
    return team


def draw_start_positions(config: CapabilityConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(ally [n_units, 2], enemy [n_enemies, 2]) start points, as SMACv2's position distributions
    give them (several units may share a point: SC2 places them around it, see `spread_stacked`)."""
    sp = config.start_positions
    kind = sp.dist_type
    if kind == "surrounded_and_reflect":
        kind = "surrounded" if rng.random() > sp.p else "reflect"
    if kind == "reflect":
        return _reflect(config, rng)
    if kind == "surrounded":
        return _surrounded(config, rng)
    # SMACv2 starcraft2.py `_create_new_team` without start_positions: allies at (8, 16), enemies
    # at (24, 16).
    return np.tile([8.0, 16.0], (config.n_units, 1)), np.tile([24.0, 16.0], (config.n_enemies, 1))


def _reflect(config: CapabilityConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`ReflectPositionDistribution`: allies uniform on [0, map_x/2 - 1] x [0, map_y], enemies their
    mirror images in x = map_x/2; extra enemies uniform on the right half."""
    n, m = config.n_units, config.n_enemies
    mx, my = config.start_positions.map_x, config.start_positions.map_y
    allies = rng.uniform((0.0, 0.0), (mx / 2 - 1, my), size=(n, 2))
    enemies = np.zeros((m, 2))
    k = min(n, m)
    enemies[:k, 0] = mx - allies[:k, 0]
    enemies[:k, 1] = allies[:k, 1]
    if m > n:
        enemies[n:] = rng.uniform((mx / 2, 0.0), (mx, my), size=(m - n, 2))
    return allies, enemies


def _surrounded(config: CapabilityConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`SurroundedPositionDistribution`: allies at the centre; 1-4 enemy groups (multinomial sizes),
    each on its own diagonal at a uniform point between the map's corner and 2 cells off centre."""
    n, m = config.n_units, config.n_enemies
    mx, my = config.start_positions.map_x, config.start_positions.map_y
    offset = 2.0
    near_centre = np.array(
        [[mx / 2 - offset, my / 2 - offset], [mx / 2 - offset, my / 2 + offset],
         [mx / 2 + offset, my / 2 + offset], [mx / 2 + offset, my / 2 - offset]]
    )  # fmt: skip
    corners = np.array([[0.0, 0.0], [0.0, my], [mx, my], [mx, 0.0]])
    groups = int(rng.integers(1, 5))
    members = rng.multinomial(m, np.ones(groups) / groups)
    t = rng.uniform(size=groups)
    diagonals = rng.choice(4, size=groups, replace=False)
    points = near_centre[diagonals] * t[:, None] + corners[diagonals] * (1 - t[:, None])
    return np.tile([mx / 2, my / 2], (n, 1)), np.repeat(points, members, axis=0)


def spread_stacked(points: np.ndarray, spacing: float) -> np.ndarray:
    """Units asked to spawn on one point, placed around it the way SC2 finds free ground: the k-th
    unit of a point on a sunflower spiral (k = 0 on the point itself), `spacing` apart. `points`
    [..., k, 2]: the leading axes are independent groups (battles)."""
    out = points.astype(np.float64)  # a copy
    k = out.shape[-2]
    close = np.abs(out[..., :, None, :] - out[..., None, :, :]).max(axis=-1) < 1e-6
    same = close & np.tri(k, k=-1, dtype=bool)
    rank = same.sum(axis=-1)  # how many units asked for this point before
    radius = spacing * np.sqrt(rank) * 0.55
    angle = rank * 2.399963  # the golden angle
    out[..., 0] += radius * np.cos(angle)
    out[..., 1] += radius * np.sin(angle)
    return out


def ally_order(type_rank: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Agent ids [..., n] of the allies: SMACv2's `init_units` sorts allies by (unit_type, x, y),
    and the 10gen maps number ally types alphabetically (`_init_ally_unit_types`: baneling,
    colossus, hydralisk, marauder, marine, medivac, stalker, zealot, zergling). `type_rank`
    [..., n] is each unit's type's place in that alphabet, `positions` [..., n, 2]; ties keep the
    drawing order (a stable sort)."""
    return np.lexsort((positions[..., 1], positions[..., 0], type_rank), axis=-1)


# --- datasets ---------------------------------------------------------------------------------

# The key under which a dataset file's attributes and its card record a SMACv2 configuration
# (`EnvConfig.smacv2_record`, as JSON in the file).
RECORD_KEY = "smacv2"


def record_mismatch(recorded: Any, wanted: Any, key: str = RECORD_KEY) -> str | None:
    """The first difference between a dataset's recorded SMACv2 configuration and the one asked
    for, as "KEY: the dataset has X, this configuration Y" (KEY dotted, e.g.
    smacv2.capability_config.start_positions.dist_type); None when they agree."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for name in sorted(set(recorded) | set(wanted)):
            problem = record_mismatch(recorded.get(name), wanted.get(name), f"{key}.{name}")
            if problem:
                return problem
        return None
    if (
        isinstance(recorded, list | tuple)
        and isinstance(wanted, list | tuple)
        and len(recorded) == len(wanted)
    ):
        for i, (a, b) in enumerate(zip(recorded, wanted, strict=True)):
            problem = record_mismatch(a, b, f"{key}[{i}]")
            if problem:
                return problem
        return None
    same = recorded == wanted or (
        isinstance(recorded, int | float) and isinstance(wanted, int | float) and np.isclose(recorded, wanted)
    )
    return None if same else f"{key}: the dataset has {recorded!r}, this configuration {wanted!r}"
