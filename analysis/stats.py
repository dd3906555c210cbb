"""Paired comparisons of two methods over seeds.

Within a seed, every student of a suite sees the same batches in the same order (the data
stream is seeded from the seed and the epoch, see ``kdbench.engine``), so two methods'
accuracies on one (dataset, pair, seed) are a pair, and the question "does method A beat
the reference B?" is answered on the per-seed differences d_i = a_i − b_i:

    d̄ = mean(d),  s = std(d, n − 1),  t = d̄ / (s / √n),  dof = n − 1,
    95% CI = d̄ ± t_{0.975, n−1} · s / √n,  p = 2 · P(T_{n−1} > |t|)  (two-sided).

This is the paired t-test (``scipy.stats.ttest_rel``); it assumes the differences are
roughly normal, which few seeds cannot check, so the interval is the honest summary and p
a marker. With fewer than ``MIN_PAIRS`` pairs the interval is not computed: with two seeds
it spans ±12.7 standard errors and says nothing a reader could use.

Degenerate case: when every difference is the same (s = 0), there is no spread to scale by;
the interval is the single value d̄, p is 0 when d̄ ≠ 0 (as ``ttest_rel``, t = ±∞) and 1
when d̄ = 0 (identical results: no evidence of a difference; ``ttest_rel`` returns nan).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

MIN_PAIRS = 3
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
TEST_NAME = "two-sided paired t-test"
NOT_COMPUTABLE = f"n<{MIN_PAIRS}: cannot be computed"


@dataclass(frozen=True)
class PairedDifference:
    """Method − reference over the seeds both finished; numbers are nan when ``n < MIN_PAIRS``."""

    n: int  # pairs: seeds where both runs finished
    mean: float  # mean difference, percentage points
    ci_low: float
    ci_high: float
    t: float
    p_value: float

    @property
    def computable(self) -> bool:
        return self.n >= MIN_PAIRS

    @property
    def significant(self) -> bool:
        return self.computable and self.p_value < SIGNIFICANCE


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """The paired t-test of ``values`` − ``reference``, both keyed by seed.

    Only seeds present (and not nan) in both enter; see the module docstring for the formulas.
    """
    seeds = sorted(s for s in values.keys() & reference.keys()
                   if not (math.isnan(values[s]) or math.isnan(reference[s])))
    n = len(seeds)
    if n < MIN_PAIRS:
        return PairedDifference(n, math.nan, math.nan, math.nan, math.nan, math.nan)
    differences = [values[s] - reference[s] for s in seeds]
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    if std == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedDifference(n, mean, mean, mean, t, 1.0 if mean == 0.0 else 0.0)
    stderr = std / math.sqrt(n)
    t = mean / stderr
    half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * stderr
    p_value = 2 * stats.t.sf(abs(t), n - 1)
    return PairedDifference(n, mean, mean - half_width, mean + half_width, t, float(p_value))
