"""What an episode the battle world produced can hold: the one check every episode passes before it
is trained on, whether it came from an actor (the replay server's online table, the one-process
trainer's buffer), a dataset file, or back out of a batch whose update went non-finite.

`episode_problem(episode, expected)` is a pure function: the first `Problem` (reason, field,
detail) of an episode, or None. `expected` is the map's `MapLayout` (sizes, episode limit and the
`WorldBounds` derived from the world's rules); None checks only what needs no map.

Reasons, from the cheapest to tell to the most specific:

    shape         fields of the wrong rank, sizes or length (past the map's episode limit)
    nonfinite     NaN or infinity in a number
    invalid       what no episode can look like: filled not a 0/1 run of ones, terminated set
                  twice or before the last step, avail_actions not 0/1 or against SMAC's rules
                  (a dead agent has only the no-op, a living one always has stop), actions out of
                  range or unavailable, an action or reward on the final observation row, an
                  impossible policy version or actor id
    out_of_range  a reward, return, observation or state value the map's world cannot produce
    inconsistent  the episode's metadata disagrees with its data (its return is not the sum of its
                  rewards, or filled marks other rows than the item holds)

The bounds (`world_bounds`) follow from SMAC's reward (the lite world computes it the same way):
per step, the damage dealt (health and shields lost by enemies, healing counting as its absolute
value) plus `reward_death_value` per enemy killed plus `reward_win`, divided by
`max_reward / reward_scale_rate` where max_reward = the enemies' total health and shields + their
deaths + the win bonus. A single step can therefore reach at most `reward_scale_rate` (20), and an
episode at most 20 plus what enemies regain while it lasts (Protoss shields, Zerg regeneration,
Medivac healing: damage can only remove health that was there), counted twice (regained, then lost
again) with a margin of 2. Observations and states are SMAC's normalised features: ratios to sight
range, map size, maximum health and shield, one-hot flags and the time step over the limit, all in
[-1, 1]; the one exception is the state's weapon cooldown, divided by SMAC's fixed per-unit
`max_cooldown`, which a hydralisk (13.3 / 10 game loops) and a zergling (11.2 / 11) exceed. Features
are bounded by 1.5 x the largest of these ratios on the map (1.5 on most maps, 2.0 with hydralisks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common.episode import Episode

# What makes an episode unfit for training (see the module doc).
PROBLEM_REASONS = ("shape", "nonfinite", "invalid", "out_of_range", "inconsistent")
# Why an episode that passed the check is taken out after all: the learner could not compute its
# loss finitely (learner/training.py).
NON_FINITE_LOSS = "non_finite_loss"
# Every reason a replay item is dropped for: an item that does not decode into an episode, a
# problem above, or a non-finite loss. The learner counts drops by these.
DROP_REASONS = ("decode", *PROBLEM_REASONS, NON_FINITE_LOSS)

# Relative (and, below 1, absolute) slack on reward bounds and sums: float32 rewards summed over a
# few hundred steps round by far less (~1e-5 relative).
REWARD_TOLERANCE = 1e-3
# Enemies' regeneration and healing over an episode, counted this many times over in the bound: the
# lite world's rates are SC2's, and the real game may round or time them differently.
REGEN_MARGIN = 2.0
# Features bounded by this much beyond the largest normalised value the world can emit.
FEATURE_MARGIN = 1.5
# Policy versions and actor ids: -1 (none) up to what an int64 tensor holds with room to spare.
MAX_ID = 2**53
NO_OP, STOP = 0, 1  # SMAC's first two actions


class Problem(NamedTuple):
    """What is wrong with an episode: `reason` (one of PROBLEM_REASONS), the `field` at fault (an
    episode field or a metadata name) and a one-line `detail`."""

    reason: str
    field: str
    detail: str


@dataclass(frozen=True)
class WorldBounds:
    """The values an honest episode of a map can hold (tolerances included).

    reward: (low, high) of one step's reward; episode_return: of the sum over an episode (None: no
    bound, e.g. a reward scale that makes no sense); features: (low, high) of every observation and
    state value."""

    reward: tuple[float, float] | None
    episode_return: tuple[float, float] | None
    features: tuple[float, float]


@dataclass(frozen=True)
class MapLayout:
    """The sizes a map (with the env flags) gives every episode, and (for a map of the battle
    world) the values its episodes can hold; `bounds` None checks sizes only."""

    map_name: str
    n_agents: int
    obs_size: int
    state_size: int
    n_actions: int
    episode_limit: int
    bounds: WorldBounds | None = None


def map_layout(map_name: str, env_cfg=None) -> MapLayout:
    """Sizes and bounds of `map_name` under the SMAC flags of `env_cfg` (default: SMAC's
    defaults). Raises ValueError for a map the battle world does not know."""
    from common.config import EnvConfig
    from common.envs.layout import ObsFlags, ObsLayout
    from common.envs.maps import get_map

    env_cfg = env_cfg or EnvConfig(map_name=map_name)
    spec = get_map(map_name)
    layout = ObsLayout.for_map(spec, ObsFlags.from_env_config(env_cfg))
    return MapLayout(
        map_name,
        spec.n_agents,
        layout.obs_size,
        layout.state_size,
        layout.n_actions,
        spec.episode_limit,
        world_bounds(spec, env_cfg),
    )


def expected_layout(env_cfg) -> MapLayout | None:
    """The layout episodes of the configured world must have; None for a map the battle world does
    not know (a matrix game: then only an episode's own consistency is checked)."""
    try:
        return map_layout(env_cfg.map_name, env_cfg)
    except ValueError:
        return None


def world_bounds(spec, env_cfg) -> WorldBounds:
    """The bounds of `spec` (a `common.envs.maps.MapSpec`) under `env_cfg`'s reward flags (see the
    module doc for the derivation)."""
    if spec.generated:
        return _generated_world_bounds(spec, env_cfg)
    return _roster_bounds(spec, env_cfg)


def _generated_world_bounds(spec, env_cfg) -> WorldBounds:
    """A SMACv2 scenario draws its teams every episode. Each bound is a ratio of sums over the
    units (with the reward scale: of the allies' and the enemies' health), whose extremes over the
    mixed teams lie at one-type teams; so the loosest of every one-type pairing holds for any draw."""
    import dataclasses

    n_allies, n_enemies = spec.n_agents, spec.n_enemies
    pairings = [
        _roster_bounds(
            dataclasses.replace(spec, allies=((a, n_allies),), enemies=((e, n_enemies),), generated=False),
            env_cfg,
        )
        for a in spec.type_order
        for e in spec.type_order
    ]

    def hull(ranges: list[tuple[float, float] | None]) -> tuple[float, float] | None:
        if any(r is None for r in ranges):
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    return WorldBounds(
        reward=hull([b.reward for b in pairings]),
        episode_return=hull([b.episode_return for b in pairings]),
        features=hull([b.features for b in pairings]),
    )


def _roster_bounds(spec, env_cfg) -> WorldBounds:
    from common.envs.units import LOOPS_PER_SECOND, SHIELD_REGEN_PER_S, ZERG_HEALTH_REGEN_PER_S

    enemies, allies = spec.enemy_units, spec.ally_units
    death = float(env_cfg.reward_death_value)
    win, defeat = float(env_cfg.reward_win), float(env_cfg.reward_defeat)
    neg = float(env_cfg.reward_negative_scale)
    enemy_health = sum(u.health + u.shield for u in enemies)
    ally_health = sum(u.health + u.shield for u in allies)
    enemy_deaths, ally_deaths = death * len(enemies), death * len(allies)
    end_high, end_low = max(0.0, win, defeat), min(0.0, win, defeat)

    def regained_per_s(unit) -> float:
        return (
            (SHIELD_REGEN_PER_S if unit.race == "P" else 0.0)
            + (ZERG_HEALTH_REGEN_PER_S if unit.race == "Z" else 0.0)
            + (unit.damage if unit.healer else 0.0)  # a Medivac heals `damage` HP per game second
        )

    seconds = spec.episode_limit * float(env_cfg.step_mul) / LOOPS_PER_SECOND
    regained = REGEN_MARGIN * seconds * sum(regained_per_s(u) for u in enemies)

    if env_cfg.reward_sparse:  # +1 for a win, -1 for a loss, once
        step = episode = (-1.0, 1.0)
    elif env_cfg.reward_only_positive:
        # |enemy health lost + deaths|: at most all of it in one step; over an episode, damage can
        # only take what was there at the start plus what was regained, and healing counts too.
        step = (end_low, enemy_health + enemy_deaths + end_high)
        episode = (end_low, enemy_health + 2 * regained + enemy_deaths + end_high)
    else:
        # Signed: enemy losses minus neg x ally losses. Over an episode health lost telescopes to
        # start minus end, within [0, total]; in one step healing can make either side negative.
        step = (
            -(enemy_health + neg * (ally_health + ally_deaths)) + end_low,
            enemy_health + enemy_deaths + neg * ally_health + end_high,
        )
        episode = (-neg * (ally_health + ally_deaths) + end_low, enemy_health + enemy_deaths + end_high)
    if env_cfg.reward_scale:
        max_reward = enemy_health + enemy_deaths + win
        divisor = max_reward / float(env_cfg.reward_scale_rate) if env_cfg.reward_scale_rate else 0.0
        if not divisor > 0 or not math.isfinite(divisor):  # a scale that means nothing: no bound
            step = episode = None
        else:
            step = (step[0] / divisor, step[1] / divisor)
            episode = (episode[0] / divisor, episode[1] / divisor)
    if step is not None and episode is not None:
        # No episode can beat its longest run of best steps either.
        limit = spec.episode_limit
        episode = (max(episode[0], step[0] * limit), min(episode[1], step[1] * limit))

    cooldown_ratios = [u.cooldown_loops / u.max_cooldown for u in allies if not u.suicide_radius]
    feature = FEATURE_MARGIN * max([1.0, *cooldown_ratios])
    if getattr(env_cfg, "fully_observable", False):
        # SMACv2's fully observable units see across the whole 32x32 map: a distance over a sight
        # range of 8 reaches 32 sqrt(2) / 8
        feature = max(feature, FEATURE_MARGIN * 32 * math.sqrt(2) / 8)
    return WorldBounds(
        reward=_with_tolerance(step),
        episode_return=_with_tolerance(episode),
        features=(-feature, feature),
    )


def _with_tolerance(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    if bounds is None:
        return None
    low, high = bounds
    slack = REWARD_TOLERANCE * max(1.0, abs(low), abs(high))
    return (low - slack, high + slack)


# --- the check ---------------------------------------------------------------------------------


def episode_problem(episode: Episode, expected: MapLayout | None = None) -> Problem | None:
    """The first thing wrong with `episode` (see the module doc), or None when it can be trained on.
    The rules of SMAC's action mask and the value bounds apply when `expected` carries bounds."""
    arrays = episode.arrays()
    return (
        _shape_problem(arrays, expected)
        or _finite_problem(arrays, episode)
        or _structure_problem(arrays)
        or _action_problem(arrays, expected)
        or _range_problem(arrays, expected)
        or _meta_problem(arrays, episode)
    )


def _shape_problem(arrays: dict, expected: MapLayout | None) -> Problem | None:
    low_rank = [k for k, a in arrays.items() if np.ndim(a) < 2]
    if low_rank:
        bad = low_rank[0]
        return Problem("shape", bad, f"shape {np.shape(arrays[bad])}, expected [L + 1, ...]")
    rows = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(rows.values())) != 1 or rows["state"] < 2:
        return Problem("shape", "state", f"fields of different or too few rows: {rows}")
    obs, avail, actions = arrays["obs"], arrays["avail_actions"], arrays["actions"]
    if obs.ndim != 3 or avail.ndim != 3 or actions.ndim != 3 or arrays["state"].ndim != 2:
        return Problem(
            "shape",
            "obs",
            f"state {arrays['state'].shape}, obs {obs.shape}, actions {actions.shape}, "
            f"avail_actions {avail.shape}: wrong number of axes",
        )
    if expected is not None:
        want = {
            "state": (expected.state_size,),
            "obs": (expected.n_agents, expected.obs_size),
            "actions": (expected.n_agents, 1),
            "avail_actions": (expected.n_agents, expected.n_actions),
            "reward": (1,),
            "terminated": (1,),
            "filled": (1,),
        }
        for name, shape in want.items():
            if tuple(arrays[name].shape[1:]) != shape:
                got = tuple(arrays[name].shape[1:])
                return Problem("shape", name, f"steps of shape {got}, this map's are {shape}")
        steps = rows["state"] - 1
        if steps > expected.episode_limit:
            return Problem(
                "shape", "filled", f"{steps} steps, more than the map's limit of {expected.episode_limit}"
            )
        return None
    n_agents, n_actions = obs.shape[1], avail.shape[2]
    consistent = {
        "actions": (n_agents, 1),
        "avail_actions": (n_agents, n_actions),
        "reward": (1,),
        "terminated": (1,),
        "filled": (1,),
    }
    for name, shape in consistent.items():
        if tuple(arrays[name].shape[1:]) != shape:
            return Problem("shape", name, f"steps of shape {tuple(arrays[name].shape[1:])}, expected {shape}")
    return None


def _finite_problem(arrays: dict, episode: Episode) -> Problem | None:
    for name in ("state", "obs", "reward"):
        values = arrays[name]
        if values.dtype.kind not in "fiu":
            return Problem("nonfinite", name, f"values of type {values.dtype}, expected numbers")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0][0])
            return Problem("nonfinite", name, f"NaN or infinity at row {row}")
    if not math.isfinite(episode.meta.episode_return):
        return Problem("nonfinite", "episode_return", "the episode return is NaN or infinity")
    return None


def _zero_one(values: np.ndarray) -> bool:
    return values.dtype.kind in "iub" and bool(((values == 0) | (values == 1)).all())


def _structure_problem(arrays: dict) -> Problem | None:
    """filled: ones on every row (an item holds no padding); terminated: 0/1, at most once, on the
    last step; the final observation row holds no action and no reward."""
    filled = arrays["filled"][:, 0]
    rows = len(filled)
    if not _zero_one(filled):
        return Problem("invalid", "filled", "values other than 0 and 1")
    gap = np.flatnonzero(np.diff(filled.astype(np.int8)) > 0)
    if gap.size:
        return Problem("invalid", "filled", f"row {int(gap[0]) + 1} is filled after an unfilled row")
    marked = int(filled.sum())
    if marked != rows:
        return Problem(
            "inconsistent",
            "filled",
            f"marks {marked} of the episode's {rows} rows; an episode holds exactly its L + 1 rows",
        )
    terminated = arrays["terminated"][:, 0]
    if not _zero_one(terminated):
        return Problem("invalid", "terminated", "values other than 0 and 1")
    ends = np.flatnonzero(terminated)
    if ends.size > 1:
        return Problem("invalid", "terminated", f"set on {ends.size} rows; an episode ends at most once")
    if ends.size and int(ends[0]) != rows - 2:
        return Problem(
            "invalid",
            "terminated",
            f"set at row {int(ends[0])}, but the episode's last step is row {rows - 2}",
        )
    if arrays["actions"][-1].any():
        return Problem("invalid", "actions", "an action on the final observation row, where none is taken")
    if arrays["reward"][-1].any():
        return Problem("invalid", "reward", "a reward on the final observation row, where no step is taken")
    return None


def _action_problem(arrays: dict, expected: MapLayout | None) -> Problem | None:
    """avail_actions 0/1 (with SMAC's rules on a battle map); actions integers in range, and
    available where taken."""
    avail, actions = arrays["avail_actions"], arrays["actions"]
    n_actions = avail.shape[2]
    if not _zero_one(avail):
        return Problem("invalid", "avail_actions", "values other than 0 and 1")
    none = ~avail.any(axis=2)
    if none.any():
        row, agent = (int(i) for i in np.argwhere(none)[0])
        return Problem("invalid", "avail_actions", f"agent {agent} has no available action at row {row}")
    if expected is not None and expected.bounds is not None and n_actions > STOP:
        # SMAC: a dead agent can only no-op; a living one can always stop, and never no-op.
        no_op, stop = avail[..., NO_OP] != 0, avail[..., STOP] != 0
        if (no_op == stop).any():
            row, agent = (int(i) for i in np.argwhere(no_op == stop)[0])
            both = "both no-op and stop" if no_op[row, agent] else "neither no-op nor stop"
            return Problem("invalid", "avail_actions", f"agent {agent} at row {row} has {both} available")
        dead_and_more = no_op & avail[..., STOP + 1 :].any(axis=2)
        if dead_and_more.any():
            row, agent = (int(i) for i in np.argwhere(dead_and_more)[0])
            return Problem(
                "invalid",
                "avail_actions",
                f"agent {agent} at row {row} is dead (no-op) but has other actions",
            )
    if actions.dtype.kind not in "iu":
        return Problem("invalid", "actions", f"actions of type {actions.dtype}, expected integers")
    if actions.size and (actions.min() < 0 or actions.max() >= n_actions):
        row, agent = (int(i) for i in np.argwhere((actions[..., 0] < 0) | (actions[..., 0] >= n_actions))[0])
        return Problem(
            "invalid",
            "actions",
            f"agent {agent} took action {actions[row, agent, 0]} at row {row}; "
            f"actions are 0..{n_actions - 1}",
        )
    taken = actions[:-1, :, 0]  # the last row is the final observation: no action
    chosen = np.take_along_axis(avail[:-1], taken[..., None].astype(np.int64), axis=-1)[..., 0]
    if not chosen.all():
        row, agent = (int(i) for i in np.argwhere(chosen == 0)[0])
        return Problem(
            "invalid",
            "actions",
            f"agent {agent} took action {taken[row, agent]} at row {row}, which was not available",
        )
    return None


def _range_problem(arrays: dict, expected: MapLayout | None) -> Problem | None:
    bounds = expected.bounds if expected is not None else None
    if bounds is None:
        return None
    low, high = bounds.features
    for name in ("obs", "state"):
        values = arrays[name]
        if values.size and (values.min() < low or values.max() > high):
            row = int(np.argwhere((values < low) | (values > high))[0][0])
            worst = values.max() if values.max() > high else values.min()
            return Problem(
                "out_of_range",
                name,
                f"value {worst:.4g} at row {row}, outside the features' [{low:g}, {high:g}]",
            )
    reward = arrays["reward"][:, 0].astype(np.float64)
    if bounds.reward is not None:
        low, high = bounds.reward
        outside = (reward < low) | (reward > high)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            return Problem(
                "out_of_range",
                "reward",
                f"{reward[row]:.4g} at row {row}; one step of this map gives [{low:.4g}, {high:.4g}]",
            )
    if bounds.episode_return is not None:
        low, high = bounds.episode_return
        total = float(reward.sum())
        if not low <= total <= high:
            return Problem(
                "out_of_range",
                "reward",
                f"sums to {total:.4g} over the episode; an episode of this map gives [{low:.4g}, {high:.4g}]",
            )
    return None


def _meta_problem(arrays: dict, episode: Episode) -> Problem | None:
    meta = episode.meta
    total = float(arrays["reward"].sum(dtype=np.float64))
    if abs(meta.episode_return - total) > REWARD_TOLERANCE * max(1.0, abs(total)):
        return Problem(
            "inconsistent",
            "episode_return",
            f"{meta.episode_return:.6g}, but the rewards sum to {total:.6g}",
        )
    for name in ("policy_version", "actor_id"):
        value = getattr(meta, name)
        if not -1 <= value <= MAX_ID:
            return Problem("invalid", name, f"{value}, outside [-1, 2^53]")
    return None
