"""SerialBatchEnv: the batch contract (automatic reset, `final` rows, per-battle flags) over single envs.

The fake battle's obs of agent i is [episode, step, i, seed, 1], so every row says which episode and
step it comes from; the reward is the sum of the actions taken (+10 for a win).
"""

from __future__ import annotations

import numpy as np
import pytest

from common.envs.protocol import BatchEnv
from common.envs.serial import SerialBatchEnv
from tests.fakes.fake_smac import FakeStarCraft2Env

STOP = 1


def three_battles() -> SerialBatchEnv:
    """Battle 0 times out at step 3; battle 1 is won at step 2; battle 2 is lost on its last step (3)."""
    return SerialBatchEnv(
        [
            FakeStarCraft2Env(seed=0, episode_limit=3),
            FakeStarCraft2Env(seed=1, episode_limit=3, win_at=2),
            FakeStarCraft2Env(seed=2, episode_limit=3, lose_at=3),
        ]
    )


def obs_rows(episode: int, step: int, seed: int) -> np.ndarray:
    return np.array([[episode, step, agent, seed, 1] for agent in range(3)], dtype=np.float32)


def stop_all(batch: SerialBatchEnv) -> np.ndarray:
    return np.full((batch.num_envs, batch.n_agents), STOP)


def test_it_is_a_batch_env_with_smacs_sizes() -> None:
    batch = three_battles()
    assert isinstance(batch, BatchEnv)
    assert (batch.num_envs, batch.n_agents, batch.n_enemies, batch.n_actions, batch.episode_limit) == (
        3,
        3,
        3,
        9,
        3,
    )
    assert batch.get_env_info()["obs_shape"] == 5


def test_reset_returns_float32_observations_and_bool_availability() -> None:
    first = three_battles().reset()
    assert first.obs.shape == (3, 3, 5) and first.obs.dtype == np.float32
    assert first.state.shape == (3, 4) and first.state.dtype == np.float32
    assert first.avail.shape == (3, 3, 9) and first.avail.dtype == bool
    for b in range(3):
        np.testing.assert_array_equal(first.obs[b], obs_rows(episode=1, step=0, seed=b))


def test_a_step_with_no_ended_battle_has_empty_final_rows() -> None:
    batch = three_battles()
    batch.reset()
    out = batch.step(np.array([[1, 6, 7], [1, 1, 1], [2, 2, 2]]))

    np.testing.assert_array_equal(out.reward, [14.0, 3.0, 6.0])
    assert out.reward.dtype == np.float32
    assert not out.terminated.any()
    assert out.done_index.shape == (0,)
    assert (
        out.final.obs.shape == (0, 3, 5)
        and out.final.state.shape == (0, 4)
        and out.final.avail.shape == (0, 3, 9)
    )
    for b in range(3):
        np.testing.assert_array_equal(out.next.obs[b], obs_rows(episode=1, step=1, seed=b))


def test_a_won_battle_reports_its_last_observation_in_final_and_restarts_in_next() -> None:
    batch = three_battles()
    batch.reset()
    batch.step(stop_all(batch))
    out = batch.step(stop_all(batch))

    np.testing.assert_array_equal(out.terminated, [False, True, False])
    np.testing.assert_array_equal(out.battle_won, [False, True, False])
    np.testing.assert_array_equal(out.episode_limit, [False, False, False])
    np.testing.assert_array_equal(out.dead_enemies, [0, 3, 0])
    np.testing.assert_array_equal(out.reward, [3.0, 13.0, 3.0])
    np.testing.assert_array_equal(out.done_index, [1])
    np.testing.assert_array_equal(out.final.obs[0], obs_rows(episode=1, step=2, seed=1))
    np.testing.assert_array_equal(out.final.state[0], [1, 2, 1, 7])
    np.testing.assert_array_equal(out.next.obs[1], obs_rows(episode=2, step=0, seed=1))
    np.testing.assert_array_equal(out.next.obs[0], obs_rows(episode=1, step=2, seed=0))


def test_time_limit_ends_are_flagged_but_a_loss_on_the_last_step_is_not() -> None:
    batch = three_battles()
    batch.reset()
    for _ in range(2):
        batch.step(stop_all(batch))
    out = batch.step(stop_all(batch))

    np.testing.assert_array_equal(out.terminated, [True, False, True])
    np.testing.assert_array_equal(out.episode_limit, [True, False, False])
    np.testing.assert_array_equal(out.battle_won, [False, False, False])
    np.testing.assert_array_equal(out.dead_allies, [0, 0, 3])
    np.testing.assert_array_equal(out.done_index, [0, 2])
    # Final rows follow done_index: the timed-out battle's last view, then the lost battle's (all dead).
    np.testing.assert_array_equal(out.final.obs[0], obs_rows(episode=1, step=3, seed=0))
    np.testing.assert_array_equal(out.final.obs[1], np.zeros((3, 5)))
    assert out.final.avail[1, :, 0].all() and not out.final.avail[1, :, 1:].any()
    # The new episodes start fresh, with live agents.
    np.testing.assert_array_equal(out.next.obs[0], obs_rows(episode=2, step=0, seed=0))
    np.testing.assert_array_equal(out.next.obs[2], obs_rows(episode=2, step=0, seed=2))
    assert out.next.avail[2, :, STOP].all()


def test_the_step_count_for_the_time_limit_restarts_with_each_episode() -> None:
    batch = SerialBatchEnv([FakeStarCraft2Env(episode_limit=2, win_at=1), FakeStarCraft2Env(episode_limit=2)])
    batch.reset()
    flags = [batch.step(stop_all(batch)).episode_limit.tolist() for _ in range(4)]
    # Battle 0 is won every step; battle 1 times out every second step.
    assert flags == [[False, False], [False, True], [False, False], [False, True]]


def test_a_time_limit_flag_from_smac_is_honoured() -> None:
    batch = SerialBatchEnv([FakeStarCraft2Env(episode_limit=1, continuing_episode=True)])
    batch.reset()
    assert batch.step(stop_all(batch)).episode_limit.tolist() == [True]


def test_stats_are_summed_over_battles() -> None:
    batch = three_battles()
    batch.reset()
    for _ in range(3):
        batch.step(stop_all(batch))

    stats = batch.get_stats()
    assert stats == {
        "battles_won": 1,
        "battles_game": 3,
        "battles_draw": 0,
        "timeouts": 1,
        "restarts": 0,
        "win_rate": pytest.approx(1 / 3),
    }


def test_stats_before_any_battle_ended_have_zero_win_rate() -> None:
    batch = three_battles()
    batch.reset()
    assert batch.get_stats()["win_rate"] == 0.0


def test_actions_are_checked_naming_the_battle_and_agent() -> None:
    batch = three_battles()
    batch.reset()
    actions = stop_all(batch)
    actions[2, 0] = 8  # agent 0 may only attack enemy 0
    with pytest.raises(ValueError, match=r"battle 2, agent 0: action 8 is not available"):
        batch.step(actions)


def test_step_before_reset_is_an_error() -> None:
    batch = three_battles()
    with pytest.raises(RuntimeError, match="reset"):
        batch.step(stop_all(batch))


def test_battles_must_share_their_shapes() -> None:
    with pytest.raises(ValueError, match="same shapes"):
        SerialBatchEnv([FakeStarCraft2Env(n_enemies=3), FakeStarCraft2Env(n_enemies=4)])


def test_close_closes_every_battle() -> None:
    envs = [FakeStarCraft2Env(), FakeStarCraft2Env()]
    SerialBatchEnv(envs).close()
    assert all(env.closed for env in envs)
