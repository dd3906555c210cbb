"""analysis.stats: the paired t-test against scipy and against the formula worked by hand."""

from __future__ import annotations

import math

import pytest
from kdbench.analysis.stats import MIN_PAIRS, paired_difference
from scipy import stats


@pytest.mark.parametrize("values, reference", [
    ([71.2, 70.4, 72.9], [70.1, 70.6, 71.0]),
    ([55.0, 57.5, 54.25, 58.0, 56.5], [56.0, 56.0, 55.5, 57.25, 55.0]),
    ([10.0, 12.0, 11.0, 9.0], [30.0, 31.0, 35.0, 29.0]),
])
def test_matches_scipy_ttest_rel(values, reference):
    result = paired_difference(dict(enumerate(values)), dict(enumerate(reference)))
    scipy_result = stats.ttest_rel(values, reference)
    low, high = scipy_result.confidence_interval(0.95)
    assert result.n == len(values)
    assert result.mean == pytest.approx(sum(values) / len(values) - sum(reference) / len(reference))
    assert result.t == pytest.approx(scipy_result.statistic)
    assert result.p_value == pytest.approx(scipy_result.pvalue)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert result.significant == (scipy_result.pvalue < 0.05)


def test_by_hand_three_seeds():
    """d = (1, 2, 3): mean 2, s = 1, t = 2/(1/√3) = 2√3; for 2 dof the two-sided p has the
    closed form 1 − |t|/√(t² + 2) = 1 − √12/√14, and t_{0.975,2} = 4.302653 (tables)."""
    result = paired_difference({0: 11.0, 1: 22.0, 2: 33.0}, {0: 10.0, 1: 20.0, 2: 30.0})
    half_width = 4.302653 / math.sqrt(3)
    assert result.mean == pytest.approx(2.0)
    assert result.t == pytest.approx(2 * math.sqrt(3))
    assert result.p_value == pytest.approx(1 - math.sqrt(12 / 14))
    assert result.ci_low == pytest.approx(2 - half_width, abs=1e-5)
    assert result.ci_high == pytest.approx(2 + half_width, abs=1e-5)
    assert not result.significant  # p = 0.074


def test_pairs_only_seeds_both_finished():
    """Seed 3 has no reference and seed 1's run is nan (failed): two pairs are left, too few."""
    values = {0: 70.0, 1: math.nan, 2: 71.0, 3: 72.0}
    reference = {0: 69.0, 1: 68.0, 2: 69.5}
    result = paired_difference(values, reference)
    assert result.n == 2 and not result.computable and not result.significant
    assert all(math.isnan(x) for x in (result.mean, result.ci_low, result.ci_high, result.t, result.p_value))
    reference[3] = 70.0
    result = paired_difference(values, reference)
    assert result.n == MIN_PAIRS and result.mean == pytest.approx(1.5)  # d = (1, 1.5, 2)
    assert result.p_value == pytest.approx(stats.ttest_rel([70.0, 71.0, 72.0], [69.0, 69.5, 70.0]).pvalue)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on constant differences
def test_no_spread():
    same = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (same.mean, same.ci_low, same.ci_high, same.p_value, same.significant) == (0.0, 0.0, 0.0, 1.0, False)
    shifted = paired_difference({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (shifted.mean, shifted.ci_low, shifted.ci_high, shifted.t, shifted.p_value) == (1.0, 1.0, 1.0, math.inf, 0.0)
    assert stats.ttest_rel([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]).pvalue == 0.0  # scipy agrees where it is defined
