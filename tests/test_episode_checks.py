"""The one episode check (`common.episode_checks`): what the battle world can produce passes, and
each thing it cannot is refused with its reason and the field at fault.

Every rule has a case below that breaks that rule alone in an honest 3m episode; honest episodes
from random and greedy play on maps of every kind (marines, Protoss shields, Zerg regeneration,
Medivac healing, hydralisk cooldowns), under SMAC's reward flags, all pass: a false refusal would
silently starve training."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from common.config import EnvConfig
from common.envs.lite import LiteBatchEnv
from common.envs.policies import make_policy
from common.envs.units import UNITS
from common.episode import Episode, EpisodeBuilder, EpisodeMeta
from common.episode_checks import MAX_ID, episode_problem, map_layout

LAYOUT = map_layout("3m")


def play(map_name: str, policy: str, episodes: int, seed: int = 0, **flags) -> list[Episode]:
    """`episodes` finished episodes of the lite world, as an actor records them."""
    battles = 8
    env = LiteBatchEnv(map_name, battles, seed=seed, **flags)
    actor = make_policy(
        policy, env.layout, env.spec, seed=seed, epsilon=0.05 if policy == "heuristic" else 0.0
    )
    builder = EpisodeBuilder(battles, env.n_agents, env.episode_limit)
    seen = env.reset()
    builder.start(seen.state, seen.obs, seen.avail)
    done: list[Episode] = []
    while len(done) < episodes:
        actions = actor.act(seen.obs, seen.avail)
        step = env.step(actions)
        done += builder.record(actions, step, meta_for=lambda b: EpisodeMeta(policy_version=4, actor_id=b))
        seen = step.next
    return done[:episodes]


@functools.cache
def honest() -> Episode:
    """A 3m episode that ended in a battle's true end, some agents dead on its last rows."""
    for episode in play("3m", "heuristic", 40):
        dead = episode.avail_actions[..., 0].any()
        if episode.terminated.any() and episode.length >= 5 and dead:
            return episode
    raise AssertionError("no 3m episode with a true end and a dead agent")


def broken(change) -> Episode:
    episode = copy.deepcopy(honest())
    change(episode)
    return episode


def keep_return(episode: Episode) -> None:
    episode.meta.episode_return = float(episode.reward.sum(dtype=np.float64))


def set_reward(value: float):
    def change(e: Episode) -> None:
        e.reward[1, 0] = value
        keep_return(e)

    return change


def every_step_reward(value: float):
    def change(e: Episode) -> None:
        e.reward[:-1, 0] = value
        keep_return(e)

    return change


def alive_row(e: Episode) -> tuple[int, int]:
    """(row, agent) of an agent alive there."""
    row, agent = np.argwhere(e.avail_actions[..., 1] == 1)[0]
    return int(row), int(agent)


def dead_row(e: Episode) -> tuple[int, int]:
    row, agent = np.argwhere(e.avail_actions[..., 0] == 1)[0]
    return int(row), int(agent)


def both_no_op_and_stop(e: Episode) -> None:
    row, agent = alive_row(e)
    e.avail_actions[row, agent, 0] = 1


def stop_missing(e: Episode) -> None:
    row, agent = alive_row(e)
    e.avail_actions[row, agent, 1] = 0
    e.actions[row, agent, 0] = max(int(e.actions[row, agent, 0]), 2)  # not the stop it took away
    e.avail_actions[row, agent, e.actions[row, agent, 0]] = 1


def dead_with_moves(e: Episode) -> None:
    row, agent = dead_row(e)
    e.avail_actions[row, agent, 2] = 1


def unavailable_action(e: Episode) -> None:
    row, agent = alive_row(e)
    taken = int(e.actions[row, agent, 0])
    other = next(a for a in range(2, LAYOUT.n_actions) if a != taken)
    e.avail_actions[row, agent, other] = 0
    e.actions[row, agent, 0] = other


def terminated_early(e: Episode) -> None:
    e.terminated[:] = 0
    e.terminated[1] = 1


def gap_in_filled(e: Episode) -> None:
    e.filled[2] = 0


def trailing_padding(e: Episode) -> None:
    e.filled[-1] = 0


def reward_on_final_row(e: Episode) -> None:
    e.reward[-1] = 1.0
    keep_return(e)


def action_on_final_row(e: Episode) -> None:
    e.actions[-1] = 1


def too_long(e: Episode) -> None:
    rows = LAYOUT.episode_limit + 2
    for name in ("state", "obs", "actions", "avail_actions", "reward", "terminated", "filled"):
        values = getattr(e, name)
        setattr(e, name, np.concatenate([values] + [values[-1:]] * (rows - len(values))))
    e.terminated[:] = 0
    e.reward[-1] = 0
    e.actions[-1] = 0
    keep_return(e)


# case -> (the change, reason, field, what the detail says)
RULES = {
    # reward, observations and state within what the map's world can produce
    "reward 3e38 at one step": (set_reward(3e38), "out_of_range", "reward", "one step of this map gives"),
    "reward 1e15 at one step": (set_reward(1e15), "out_of_range", "reward", "one step of this map gives"),
    "a negative reward where only positive ones are given": (
        set_reward(-1.0),
        "out_of_range",
        "reward",
        "one step of this map gives",
    ),
    "19 each step: every step possible, their sum not": (
        every_step_reward(19.0),
        "out_of_range",
        "reward",
        "over the episode; an episode of this map gives",
    ),
    "an observation of 3e38": (
        lambda e: e.obs.__setitem__((0, 0, 0), 3e38),
        "out_of_range",
        "obs",
        "outside the features'",
    ),
    "an observation of -2": (
        lambda e: e.obs.__setitem__((1, 1, 3), -2.0),
        "out_of_range",
        "obs",
        "-2 at row 1",
    ),
    "a state value of 3e38": (
        lambda e: e.state.__setitem__((0, 0), 3e38),
        "out_of_range",
        "state",
        "outside the features'",
    ),
    # filled: ones on every row the episode holds
    "filled 7": (lambda e: e.filled.__setitem__(slice(None), 7), "invalid", "filled", "other than 0 and 1"),
    "a filled row after an unfilled one": (gap_in_filled, "invalid", "filled", "row 3 is filled after"),
    "filled marking fewer rows than held": (trailing_padding, "inconsistent", "filled", "holds exactly"),
    # terminated: 0/1, at most once, at the last step
    "terminated 200": (
        lambda e: e.terminated.__setitem__(slice(None), 200),
        "invalid",
        "terminated",
        "other than 0 and 1",
    ),
    "terminated on every step": (
        lambda e: e.terminated.__setitem__(slice(None), 1),
        "invalid",
        "terminated",
        "ends at most once",
    ),
    "terminated before the last step": (terminated_early, "invalid", "terminated", "set at row 1, but"),
    # the final observation row takes no action and gives no reward
    "an action on the final row": (action_on_final_row, "invalid", "actions", "final observation row"),
    "a reward on the final row": (reward_on_final_row, "invalid", "reward", "final observation row"),
    # avail_actions: 0/1 and SMAC's rules
    "avail_actions 5": (
        lambda e: e.avail_actions.__setitem__(slice(None), 5),
        "invalid",
        "avail_actions",
        "other than 0 and 1",
    ),
    "a living agent offered the no-op": (
        both_no_op_and_stop,
        "invalid",
        "avail_actions",
        "both no-op and stop",
    ),
    "a living agent without stop": (stop_missing, "invalid", "avail_actions", "neither no-op nor stop"),
    "a dead agent offered a move": (dead_with_moves, "invalid", "avail_actions", "is dead"),
    # actions: in range, available
    "an action past n_actions": (
        lambda e: e.actions.__setitem__((0, 0, 0), LAYOUT.n_actions + 5),
        "invalid",
        "actions",
        f"took action {LAYOUT.n_actions + 5}",
    ),
    "a negative action": (
        lambda e: e.actions.__setitem__((0, 0, 0), -1),
        "invalid",
        "actions",
        "took action -1",
    ),
    "an unavailable action": (unavailable_action, "invalid", "actions", "which was not available"),
    # length and metadata
    "more steps than the map's limit": (too_long, "shape", "filled", "more than the map's limit of 60"),
    "a return that is not the sum of the rewards": (
        lambda e: setattr(e.meta, "episode_return", e.meta.episode_return + 5.0),
        "inconsistent",
        "episode_return",
        "but the rewards sum to",
    ),
    "a policy version past int64": (
        lambda e: setattr(e.meta, "policy_version", 10**300),
        "invalid",
        "policy_version",
        "outside [-1, 2^53]",
    ),
    "an actor id below -1": (
        lambda e: setattr(e.meta, "actor_id", -(MAX_ID + 5)),
        "invalid",
        "actor_id",
        "outside [-1, 2^53]",
    ),
    "a NaN reward": (set_reward(float("nan")), "nonfinite", "reward", "NaN or infinity at row 1"),
}


def test_the_honest_episode_the_rules_start_from_passes():
    assert episode_problem(honest(), LAYOUT) is None


@pytest.mark.parametrize("case", list(RULES))
def test_each_thing_the_world_cannot_produce_is_refused_with_its_reason_and_field(case):
    change, reason, field, detail = RULES[case]
    problem = episode_problem(broken(change), LAYOUT)
    assert problem is not None, f"{case} passed"
    assert (problem.reason, problem.field) == (reason, field) and detail in problem.detail, problem


def test_without_a_map_an_agent_with_no_available_action_is_still_refused():
    def nothing_available(e: Episode) -> None:
        e.avail_actions[1, 0] = 0

    problem = episode_problem(broken(nothing_available), expected=None)
    assert problem is not None and (problem.reason, problem.field) == ("invalid", "avail_actions")


# --- the bounds --------------------------------------------------------------------------------


def test_one_step_gives_at_most_the_reward_scale_rate_and_a_map_without_regeneration_its_episode_too():
    bounds = LAYOUT.bounds
    assert bounds.reward == pytest.approx((0.0, 20.0), abs=0.03)
    assert bounds.episode_return == pytest.approx((0.0, 20.0), abs=0.03)
    assert bounds.features == (-1.5, 1.5)


def test_a_map_whose_enemies_regain_health_allows_returns_above_20_that_honest_play_reaches():
    bounds = map_layout("2s3z").bounds
    assert bounds.reward[1] == pytest.approx(20.0, abs=0.03)  # one step: still at most 20
    high = [e for e in play("2s3z", "heuristic", 96, seed=1) if e.meta.episode_return > 20.05]
    assert high, "no 2s3z episode above 20: the shields' regeneration bound is not exercised"
    for episode in high:
        assert episode_problem(episode, map_layout("2s3z")) is None


def test_hydralisk_cooldowns_in_the_state_exceed_1_and_keep_the_same_margin():
    # SMAC divides a weapon's cooldown by a fixed per-unit maximum that the hydralisk's exceeds.
    hydralisk = UNITS["hydralisk"]
    largest = hydralisk.cooldown_loops / hydralisk.max_cooldown
    layout = map_layout("6h_vs_8z")
    assert layout.bounds.features == pytest.approx((-1.5 * largest, 1.5 * largest))
    states = [e for e in play("6h_vs_8z", "heuristic", 32) if e.state.max() > 1.0]
    assert states and max(e.state.max() for e in states) == pytest.approx(largest, abs=0.02)
    assert all(episode_problem(e, layout) is None for e in states)


HONEST_MAPS = ("3m", "8m", "2s3z", "3s5z", "MMM", "MMM2", "6h_vs_8z", "bane_vs_bane", "2c_vs_64zg")


@pytest.mark.parametrize("map_name", HONEST_MAPS)
@pytest.mark.parametrize("policy", ["random", "heuristic"])
def test_honest_episodes_of_every_kind_of_map_all_pass(map_name, policy):
    layout = map_layout(map_name)
    refused = [
        (e.length, episode_problem(e, layout))
        for e in play(map_name, policy, 24, seed=3)
        if episode_problem(e, layout) is not None
    ]
    assert refused == []


FLAG_SETS = {
    "every observation flag": dict(
        obs_last_action=True,
        obs_pathing_grid=True,
        obs_terrain_height=True,
        obs_timestep_number=True,
        state_timestep_number=True,
    ),
    "observations for state": dict(obs_instead_of_state=True),
    "signed rewards": dict(reward_only_positive=False),
    "signed rewards, a defeat penalty": dict(reward_only_positive=False, reward_defeat=-50.0),
    "sparse rewards": dict(reward_sparse=True),
    "unscaled rewards": dict(reward_scale=False),
}


@pytest.mark.parametrize("flags", list(FLAG_SETS))
@pytest.mark.parametrize("map_name", ["3m", "3s5z", "MMM2"])
def test_honest_episodes_pass_under_smacs_other_flags(flags, map_name):
    smac = FLAG_SETS[flags]
    layout = map_layout(map_name, EnvConfig(map_name=map_name, **smac))
    episodes = play(map_name, "random", 12, seed=5, **smac) + play(map_name, "heuristic", 12, seed=5, **smac)
    assert [episode_problem(e, layout) for e in episodes] == [None] * len(episodes)
    if smac.get("reward_only_positive") is False:
        assert min(e.reward.min() for e in episodes) < 0  # negative rewards do occur, and pass
