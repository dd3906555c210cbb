"""``kdbench bench`` (a)'s confidence interval of a median ratio and when it stops adding rounds."""

import pytest
from scipy.stats import binom

from kdbench.tools.bench import RATIO_SPREAD, _median_interval, _settled


@pytest.mark.parametrize(("n", "rank"), [(6, 1), (7, 1), (11, 2), (20, 6), (30, 10)])
def test_the_median_interval_is_the_binomial_order_statistics(n, rank):
    """The rank-th smallest and largest of n values, rank the largest with P(B(n, 1/2) ≤ rank - 1)
    ≤ 2.5% (the ranks as tabulated for the sign test, and as scipy's binomial gives them)."""
    assert binom.cdf(rank - 1, n, 0.5) <= 0.025 < binom.cdf(rank, n, 0.5)
    values = [float(v) for v in reversed(range(1, n + 1))]  # any order
    assert _median_interval(values) == (rank, n + 1 - rank)


def test_too_few_rounds_give_no_interval_and_never_settle():
    assert _median_interval([1.0] * 5) is None and not _settled([1.0] * 5)


def test_settled_when_the_interval_lies_within_half_the_spread_of_the_median():
    # 11 rounds: the interval is the 2nd and 10th values around a median of 1
    near = RATIO_SPREAD / 2 * 0.8
    inside = [0.5, 1 - near, 1, 1, 1, 1, 1, 1, 1, 1 + near, 2.0]
    assert _median_interval(inside) == (1 - near, 1 + near) and _settled(inside)
    assert not _settled([0.5, 1 - RATIO_SPREAD, 1, 1, 1, 1, 1, 1, 1, 1, 2.0])


def test_step_ratios_from_too_few_rounds_carry_no_interval():
    import torch

    from kdbench.tools.bench import step_ratios

    ratios = step_ratios({"kd": lambda: None, "other": lambda: sum(range(100))}, "kd", steps=2, rounds=3,
                         device=torch.device("cpu"))
    assert all(r.interval is None and r.rounds == 3 and not r.settled for r in ratios.values())
    assert ratios["kd"].ratio == 1.0
