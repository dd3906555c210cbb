"""A report cell's content, read once from a row of ``summary.csv``: its numbers formatted,
its marks decided. ``table.md`` and the ``.tex`` tables write a cell through a
``tables.Markup`` (``written``); ``report.html``'s template reads the same fields.

- ``Accuracy``: a cell of the main table: mean, ± std, bold/underline for the best and
  second method, † for p < 0.05 against the reference, ``[n=k]`` where fewer runs finished
  than the suite has seeds, and the augmentation note of a cell trained otherwise.
- ``Paired``: the paired difference to the reference: mean [95% CI], p (n); "n<3: cannot
  be computed" with too few pairs. The same columns, under a prefix, hold each fidelity
  measure's test (``analysis.fidelity``).
- ``Published``: ours on the papers' rule (best test epoch) ± std, the published number,
  our difference to it, ‡ where the published number lies outside our seeds' range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .stats import NOT_COMPUTABLE
from .tables import MARKDOWN, Markup


def is_true(value: Any) -> bool:
    """A boolean column's value, where a missing value is False."""
    return not pd.isna(value) and bool(value)


@dataclass(frozen=True)
class Accuracy:
    """A main-table cell; ``sort`` is None without a finished run."""

    text: str = "–"  # the mean, two decimals
    sort: float | None = None  # the mean
    std: str | None = None
    rank: int | None = None  # 1 best, 2 second, among methods
    significant: bool = False
    n: int | None = None  # finished runs; None for the teacher
    note: str = ""  # the augmentation of a cell trained otherwise

    def written(self, markup: Markup, n_seeds: int) -> str:
        text = markup.empty
        if self.sort is not None:
            text = {1: markup.bold, 2: markup.underline}.get(self.rank, str)(self.text)
            text += markup.spread(self.std) if self.std is not None else ""
            text += markup.dagger if self.significant else ""
        notes = [self.note] if self.note else []
        if self.n is not None and self.n < n_seeds:
            notes.append(f"[n={self.n}]")
        return text + (markup.small(markup.escape(" ".join(notes))) if notes else "")


def accuracy_cell(row: pd.Series | None) -> Accuracy:
    if row is None:
        return Accuracy()
    marks = {"n": int(row["n"]) if row["role"] != "teacher" else None, "note": row["augment_note"]}
    if not row["n"]:
        return Accuracy(**marks)
    return Accuracy(f"{row['mean']:.2f}", row["mean"], None if math.isnan(row["std"]) else f"{row['std']:.2f}",
                    None if pd.isna(row["rank"]) else int(row["rank"]), is_true(row["significant"]), **marks)


@dataclass(frozen=True)
class Paired:
    """A paired-difference cell; ``n`` is None where there is no test (the teacher, the
    reference), ``sort`` None where there are too few pairs to compute one."""

    n: int | None = None
    sort: float | None = None  # the mean difference
    low: float = math.nan
    high: float = math.nan
    p: str = ""  # p=0.012, or p<0.001
    significant: bool = False
    decimals: int = 2

    @property
    def text(self) -> str:
        """The mean difference in plain text, or why there is none."""
        return "–" if self.n is None else NOT_COMPUTABLE if self.sort is None else MARKDOWN.signed(self.sort,
                                                                                                  self.decimals)

    @property
    def ci(self) -> str:
        return self.interval(MARKDOWN)

    def interval(self, markup: Markup) -> str:
        return f"[{markup.signed(self.low, self.decimals)}, {markup.signed(self.high, self.decimals)}]"

    def written(self, markup: Markup) -> str:
        """``+1.23 [+0.45, +2.01], p=0.012 (n=3)``."""
        if self.n is None:
            return markup.empty
        if self.sort is None:
            return markup.escape(NOT_COMPUTABLE)
        return (f"{markup.signed(self.sort, self.decimals)} {self.interval(markup)}, {markup.escape(self.p)} "
                f"(n={self.n})")


def paired_cell(row: pd.Series | None, prefix: str = "", decimals: int = 2) -> Paired:
    """The paired test in ``row``'s ``<prefix>paired_n`` … ``<prefix>significant`` columns."""
    if row is None or pd.isna(row[f"{prefix}paired_n"]):
        return Paired(decimals=decimals)
    n = int(row[f"{prefix}paired_n"])
    if pd.isna(row[f"{prefix}diff_mean"]):
        return Paired(n, decimals=decimals)
    p_value = row[f"{prefix}p_value"]
    return Paired(n, row[f"{prefix}diff_mean"], row[f"{prefix}diff_ci_low"], row[f"{prefix}diff_ci_high"],
                  "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}", is_true(row[f"{prefix}significant"]),
                  decimals)


@dataclass(frozen=True)
class Published:
    """Ours on the papers' rule against the published number; ``sort`` (our difference to
    it) is None where the cell has no published number or no run."""

    ours: str = ""  # mean over seeds, best test epoch
    std: str | None = None
    paper: str = ""
    sort: float | None = None  # ours − published
    outside: bool = False  # the published number lies outside our seeds' range

    def written(self, markup: Markup) -> str:
        """``76.10 ± 0.21 vs 76.32 (−0.22)‡``."""
        if self.sort is None:
            return markup.empty
        spread = markup.spread(self.std) if self.std is not None else ""
        return (f"{self.ours}{spread} vs {self.paper} ({markup.signed(self.sort)})"
                f"{markup.ddagger if self.outside else ''}")


def published_cell(row: pd.Series | None) -> Published:
    if row is None or pd.isna(row["paper"]) or pd.isna(row["mean_best_test"]):
        return Published()
    return Published(f"{row['mean_best_test']:.2f}", None if pd.isna(row["std_best_test"]) else
                     f"{row['std_best_test']:.2f}", f"{row['paper']:.2f}", row["delta_paper"],
                     is_true(row["paper_outside_spread"]))
