"""Linear schedules (Eqs. 6 and 7): epsilon and the OVM memory coefficient hit their endpoints and
stay at their floors."""

from __future__ import annotations

import pytest

from common.config.presets import preset_config
from common.config.sections import ActorConfig, LearnerConfig
from common.schedules import epsilon_at, linear_anneal, memory_coefficient_at


def test_linear_anneal_starts_ends_and_stays_at_the_floor():
    assert linear_anneal(1.0, 0.05, 100, 0) == 1.0
    assert linear_anneal(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert linear_anneal(1.0, 0.05, 100, 100) == pytest.approx(0.05)
    assert linear_anneal(1.0, 0.05, 100, 10_000) == pytest.approx(0.05)
    assert linear_anneal(1.0, 0.05, 100, -5) == 1.0
    # The paper's form max(end, start - (start - end) * t / T) at every step.
    for t in range(0, 300, 7):
        assert linear_anneal(1.0, 0.1, 200, t) == pytest.approx(max(0.1, 1.0 - 0.9 * t / 200))


def test_zero_anneal_steps_means_already_annealed_and_constant_when_start_equals_end():
    assert linear_anneal(1.0, 0.05, 0, 0) == 0.05
    assert linear_anneal(1.0, 1.0, 0, 0) == 1.0
    assert linear_anneal(1.0, 1.0, 0, 10**9) == 1.0


def test_epsilon_follows_the_actor_config():
    actor = ActorConfig(epsilon_start=1.0, epsilon_end=0.05, epsilon_anneal_steps=100_000)
    assert epsilon_at(actor, 0) == 1.0
    assert epsilon_at(actor, 50_000) == pytest.approx(0.525)
    assert epsilon_at(actor, 100_000) == pytest.approx(0.05)
    assert epsilon_at(actor, 5_000_000) == pytest.approx(0.05)


def test_memory_coefficient_follows_the_papers_presets():
    constant = preset_config("3s5z", "medium", "ovmse").learner  # lambda = 1, no annealing
    assert memory_coefficient_at(constant, 0) == 1.0
    assert memory_coefficient_at(constant, 10**7) == 1.0
    annealed = preset_config("5m_vs_6m", "medium", "ovmse").learner  # 1.0 -> 0.1 over 200k steps
    assert memory_coefficient_at(annealed, 0) == 1.0
    assert memory_coefficient_at(annealed, 100_000) == pytest.approx(0.55)
    assert memory_coefficient_at(annealed, 200_000) == pytest.approx(0.1)
    assert memory_coefficient_at(annealed, 3_000_000) == pytest.approx(0.1)
    assert memory_coefficient_at(LearnerConfig(), 123) == 1.0


def test_a_one_step_anneal_starts_at_start_and_is_at_end_after_one_step():
    assert linear_anneal(1.0, 0.0, 1, 0) == 1.0
    assert linear_anneal(1.0, 0.0, 1, 1) == 0.0
