"""Confidence intervals of evaluation results, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from common.stats import mean_half_width, wilson_interval

Z = 1.96


def wilson_by_hand(wins: int, n: int) -> tuple[float, float]:
    # (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = wins / n
    p = wins / n
    centre = p + Z**2 / (2 * n)
    spread = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return (centre - spread) / (1 + Z**2 / n), (centre + spread) / (1 + Z**2 / n)


@pytest.mark.parametrize(
    "wins, n, expected",
    [
        (0, 10, (0.0, 0.2775)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
        (205, 640, (0.2853, 0.3574)),
    ],
)
def test_wilson_interval_matches_the_formula(wins, n, expected):
    low, high = wilson_interval(wins, n)
    assert (low, high) == pytest.approx(wilson_by_hand(wins, n), abs=1e-12)
    assert (low, high) == pytest.approx(expected, abs=5e-5)


def test_wilson_interval_is_not_empty_at_the_extremes_and_narrows_with_more_episodes():
    assert wilson_interval(0, 10)[1] > 0.0 and wilson_interval(10, 10)[0] < 1.0
    narrow, wide = wilson_interval(320, 640), wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_no_episodes_say_nothing_about_the_win_rate():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_return_half_width_is_196_standard_errors():
    # mean 2.5, sample variance ((1.5^2 + 0.5^2) * 2) / 3 = 5/3, standard error sqrt(5/3 / 4)
    assert mean_half_width([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.96 * math.sqrt(5 / 12))
    assert mean_half_width([7.0, 7.0, 7.0]) == 0.0


def test_return_half_width_is_zero_below_two_episodes():
    assert mean_half_width([]) == 0.0 and mean_half_width([3.0]) == 0.0


def test_t_interval_over_five_seeds_uses_students_t_with_four_degrees_of_freedom():
    from common.stats import t_interval

    values = [0.2, 0.4, 0.3, 0.5, 0.1]  # mean 0.3, sample sd sqrt(0.025)
    half = 2.776 * math.sqrt(0.025) / math.sqrt(5)
    assert t_interval(values) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert math.isnan(t_interval([0.4])[1])


def test_t_interval_of_two_values_uses_one_degree_of_freedom_and_many_fall_back_to_z():
    from common.stats import t_interval

    # Two values 0 and 1: mean 0.5, sd sqrt(0.5); t(1) = 12.706.
    assert t_interval([0.0, 1.0]) == pytest.approx((0.5, 0.5 - 12.706 * 0.5, 0.5 + 12.706 * 0.5))
    values = [0.0, 1.0] * 10  # 19 degrees of freedom: past the table, 1.96 stands in
    half = 1.96 * math.sqrt(5 / 19) / math.sqrt(20)
    assert t_interval(values) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
