"""paper/stats.py: paired 95% intervals and verdicts against cases worked out by hand."""

import math

import pytest

from paper import stats


def sample_stdev(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_t_quantiles_come_from_the_table_and_round_towards_wider_intervals():
    assert stats.t_975(2) == 4.303 and stats.t_975(20) == 2.086
    assert stats.t_975(22) == 2.086  # 22 is between 20 and 25: the wider (smaller df) value
    assert stats.t_975(500) == 1.960
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.t_975(0)


def test_holds_when_every_seed_favours_the_claim_beyond_the_spread():
    # differences 2, 2, 1: mean 5/3, s = sqrt(1/3), half-width 4.303 * s / sqrt(3) = 4.303 / 3
    result = stats.paired([3, 4, 5], [1, 2, 4])
    assert result.differences == [2, 2, 1]
    assert result.mean == pytest.approx(5 / 3)
    assert result.low == pytest.approx(5 / 3 - 4.303 / 3)
    assert result.high == pytest.approx(5 / 3 + 4.303 / 3)
    assert result.verdict == "holds" and result.seeds_needed == 0


def test_fails_when_the_interval_lies_on_the_other_side():
    assert stats.paired([1, 2, 4], [3, 4, 5]).verdict == "fails"
    # lower is better (a loss): ours lower on every seed -> the claim holds
    assert stats.paired([1, 2, 4], [3, 4, 5], higher_is_better=False).verdict == "holds"


def test_level_when_the_interval_straddles_zero_inside_the_margin():
    # differences 0, 0.1, -0.1: s = 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.2484
    # margin: 5% of the baseline's mean 10 = 0.5
    result = stats.paired([10.0, 10.1, 9.9], [10.0, 10.0, 10.0])
    assert result.margin == pytest.approx(0.5)
    assert result.high == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert result.verdict == "level"
    assert stats.paired([10.0, 10.1, 9.9], [10.0, 10.0, 10.0], margin=0.2).verdict == "undecided"


def test_undecided_says_how_many_seeds_the_observed_spread_needs():
    # differences 1, -0.5, 2: mean 5/6, s = 1.2583; with n seeds the half-width is
    # t(n - 1) * 1.2583 / sqrt(n): n = 11 gives 2.228 * 1.2583 / 3.3166 = 0.845 > 5/6,
    # n = 12 gives 2.201 * 1.2583 / 3.4641 = 0.7995 < 5/6
    result = stats.paired([11.0, 9.5, 12.0], [10.0, 10.0, 10.0])
    assert result.verdict == "undecided"
    assert sample_stdev(result.differences) == pytest.approx(1.2583, abs=1e-4)
    assert result.seeds_needed == 12


def test_a_censored_seed_counts_as_the_run_length_and_blocks_the_verdicts_it_could_overturn():
    """Steps to reach a loss, lower is better; None: never reached in a run of 120 steps."""
    # theirs never reached it at seed 2: their true value is above 120, the difference larger
    # still, so "holds" stands. Differences 50, 60, 55: s = 5, half-width 4.303 * 5 / sqrt(3)
    result = stats.paired([50, 60, 55], [100, None, 110], higher_is_better=False, run_length=120)
    assert result.differences == [50, 60, 55] and result.censored_theirs == 1
    assert result.low == pytest.approx(55 - 4.303 * 5 / math.sqrt(3))
    assert result.verdict == "holds"
    # ours never reached it at seed 1: its true value could be anything above 100, so the same
    # positive interval is only a bound: undecided, never "holds"
    result = stats.paired([None, 50, 55], [130, 110, 115], higher_is_better=False, run_length=100)
    assert result.differences == [30, 60, 60] and result.low > 0
    assert result.censored_ours == 1 and result.verdict == "undecided"
    with pytest.raises(ValueError, match="run_length"):
        stats.paired([None, 50], [130, 110], higher_is_better=False)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="two or more paired seeds"):
        stats.paired([1.0], [2.0])
    with pytest.raises(ValueError, match="two or more paired seeds"):
        stats.paired([1.0, 2.0], [2.0])


def test_curve_area_is_the_mean_loss_over_the_steps():
    # trapezoids: 10 * (1.0 + 0.5) / 2 + 10 * (0.5 + 0.5) / 2 = 12.5 over 20 steps
    assert stats.curve_area([(0, 1.0), (10, 0.5), (20, 0.5)]) == pytest.approx(0.625)
    assert stats.curve_area([(25, 0.8), (50, 0.6)]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="two or more"):
        stats.curve_area([(25, 0.8)])


def test_late_change_is_the_relative_fall_over_the_last_fifth_of_the_run():
    curve = [(0, 1.0), (50, 0.8), (100, 0.7), (150, 0.65), (200, 0.6), (250, 0.59)]
    # the last 20% of steps 0..250 starts at step 200: (0.6 - 0.59) / 0.6
    assert stats.late_change(curve) == pytest.approx(0.01 / 0.6)
    # still dropping: from 0.8 at step 160 to 0.6 at 200, a quarter
    assert stats.late_change([(0, 1.0), (160, 0.8), (200, 0.6)]) == pytest.approx(0.25)
