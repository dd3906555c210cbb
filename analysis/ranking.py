"""Which methods rank best across the suite's cells, and which differences are real.

A cell is one (dataset, teacher→student pair). Following Demšar ("Statistical Comparisons
of Classifiers over Multiple Data Sets", JMLR 2006), each cell ranks the methods by their
mean test top-1 over seeds under the suite's selection rule (1 = best; tied means share
the average rank), and:

- each method's average rank over the cells;
- the Friedman test (``scipy.stats.friedmanchisquare``) of "all methods rank alike";
- the Nemenyi post-hoc test (``scikit_posthocs.posthoc_nemenyi_friedman``) for every pair
  of methods, and the critical difference CD = q_α √(k(k+1)/(6N)) (k methods, N cells,
  q_α the studentized range quantile / √2, ``scipy.stats.studentized_range``), drawn as a
  critical-difference diagram (``scikit_posthocs.critical_difference_diagram``): methods
  joined by a bar are not told apart at α = 0.05;
- each method's paired difference to the reference pooled over cells: every (cell, seed)
  where both finished is one pair (runs of one seed saw the same batches), and the paired
  t-test of ``analysis.stats`` runs over all of them. The mean weights every pair alike;
  the interval treats the suite's cells as a fixed set (not a sample of all data sets),
  and a gain that differs between cells widens it.

Ranked are the methods of the main table's ranking (no teacher, no controls) that have a
mean in every cell; a method missing from a cell is left out and named. With one cell
there is no ranking across cells, and with fewer than three methods no Friedman test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

from . import style
from .stats import NOT_COMPUTABLE, paired_difference
from .tables import Grid, latex_escape, latex_table, markdown_table

ALPHA = 0.05
MIN_CELLS = 2
MIN_METHODS = 3


@dataclass(frozen=True)
class Ranking:
    """The ranking across cells, or why there is none (``reason``)."""

    cells: int
    reason: str = ""  # empty when the ranking exists
    left_out: list[str] = field(default_factory=list)  # methods without a mean in every cell
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per method
    friedman: tuple[float, float] | None = None  # chi-square statistic, p
    critical_difference: float = math.nan
    nemenyi: pd.DataFrame = field(default_factory=pd.DataFrame)  # p-values, methods × methods

    @property
    def exists(self) -> bool:
        return not self.reason


TABLE_COLUMNS = ["label", "average_rank", "cells", "reference", "pooled_n", "pooled_diff_mean", "pooled_ci_low",
                 "pooled_ci_high", "pooled_p_value"]


def rank_methods(summary: pd.DataFrame, runs: pd.DataFrame, reference: str) -> Ranking:
    """The ranking of ``summary``'s methods (``report.summarise``) across its cells, with
    the pooled paired differences from ``runs`` (``report.run_table``)."""
    contenders = summary[(summary["role"] != "teacher") & (summary["control"] == "") & (summary["n"] > 0)]
    means = contenders.pivot_table(index=["dataset", "pair"], columns="label", values="mean", sort=False)
    cells = len(means)
    if cells < MIN_CELLS:
        return Ranking(cells, f"The suite has {cells} cell (dataset × pair): no ranking across cells exists.")
    complete = means.dropna(axis=1)
    left_out = [label for label in means.columns if label not in complete.columns]
    order = [label for label in dict.fromkeys(contenders["label"]) if label in complete.columns]
    complete = complete[order]
    if len(order) < MIN_METHODS:
        return Ranking(cells, f"{len(order)} method(s) have a mean in every one of the {cells} cells: the Friedman "
                              f"test needs {MIN_METHODS}.", left_out)
    ranks = complete.rank(axis=1, ascending=False, method="average")
    statistic, p_value = stats.friedmanchisquare(*(complete[label].to_numpy() for label in order))
    nemenyi = sp.posthoc_nemenyi_friedman(complete.to_numpy())
    nemenyi.index = nemenyi.columns = order
    k = len(order)
    q_alpha = stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / math.sqrt(2)
    rows = []
    baseline = _by_cell_and_seed(runs, reference)
    for label in order:
        pooled = paired_difference(_by_cell_and_seed(runs, label), baseline if label != reference else {})
        rows.append({"label": label, "average_rank": ranks[label].mean(), "cells": cells, "reference": reference,
                     "pooled_n": pooled.n, "pooled_diff_mean": pooled.mean, "pooled_ci_low": pooled.ci_low,
                     "pooled_ci_high": pooled.ci_high, "pooled_p_value": pooled.p_value})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("average_rank", kind="stable")
    return Ranking(cells, "", left_out, table.reset_index(drop=True), (float(statistic), float(p_value)),
                   q_alpha * math.sqrt(k * (k + 1) / (6 * cells)), nemenyi)


def _by_cell_and_seed(runs: pd.DataFrame, label: str) -> dict[tuple[str, str, int], float]:
    """(dataset, pair, seed) → the selected accuracy of the label's finished runs."""
    done = runs[(runs["label"] == label) & (runs["status"] == "finished")].dropna(subset=["seed", "value"])
    return {(d, p, int(s)): float(v) for d, p, s, v in zip(done["dataset"], done["pair"], done["seed"], done["value"])}


def caption(ranking: Ranking, reference_name: str) -> str:
    """What the ranking table and diagram show, in words."""
    if not ranking.exists:
        return ranking.reason
    statistic, p_value = ranking.friedman
    text = (f"Average rank of each method's mean test top-1 over {ranking.cells} cells (dataset × pair; 1 = best). "
            f"Friedman test: χ² = {statistic:.2f}, p = {p_value:.3g}. Nemenyi critical difference at α = {ALPHA}: "
            f"{ranking.critical_difference:.2f} ranks; in the diagram, methods joined by a bar are not told apart. "
            f"Pooled difference to {reference_name}: mean over every (cell, seed) pair where both finished, its 95% "
            "paired-t interval and p (the cells taken as this suite's fixed set).")
    if ranking.cells < 5:
        text += (f" With {ranking.cells} cells the tests have little power: Demšar's chi-square approximation "
                 "wants more, so read the ranks, not the p-values.")
    if ranking.left_out:
        text += f" Left out (no mean in every cell): {', '.join(style.display_name(m) for m in ranking.left_out)}."
    return text


def plot_critical_difference(ranking: Ranking, stem: Path) -> list[Path]:
    """The critical-difference diagram (``stem``.pdf/.png); no files without a ranking."""
    if not ranking.exists:
        return []
    names = {label: style.display_name(label) for label in ranking.table["label"]}
    average = pd.Series(ranking.table["average_rank"].to_numpy(), index=[names[m] for m in ranking.table["label"]])
    significance = ranking.nemenyi.rename(index=names, columns=names)
    k = len(average)
    fig, axes = style.figure(style.SINGLE * 1.6, aspect=0.2 + 0.05 * k)
    ax = axes[0, 0]
    sp.critical_difference_diagram(average, significance, ax=ax, alpha=ALPHA, cd=ranking.critical_difference,
                                   color_palette={names[m]: style.color(m) for m in names},
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}")
    ax.grid(False)
    ax.spines["top"].set_visible(True)  # the rank axis (the kdbench style hides top spines)
    ax.set_xlim(0.9, k + 0.1)  # every rank a method could have, so that distances read true
    ax.set_xticks(range(1, k + 1))
    ax.set_ylim(top=1.6)  # room for the CD bar and its label above the axis
    ax.set_title(f"Average rank over {ranking.cells} cells (1 = best)", loc="left", y=1.0, pad=0)
    return style.save(fig, stem)


def rows(ranking: Ranking, reference_name: str) -> tuple[list[str], list[list[str]]]:
    """The ranking table as text: method, average rank, pooled difference [CI], p, pairs."""
    header = ["Method", "Average rank", f"Pooled Δ to {reference_name} (pp) [95% CI]", "p", "Pairs"]
    body = []
    for row in ranking.table.itertuples():
        if math.isnan(row.pooled_diff_mean):
            pooled, p_text = ("reference" if row.label == row.reference else NOT_COMPUTABLE), "–"
        else:
            pooled = f"{row.pooled_diff_mean:+.2f} [{row.pooled_ci_low:+.2f}, {row.pooled_ci_high:+.2f}]"
            p_text = "p<0.001" if row.pooled_p_value < 0.001 else f"{row.pooled_p_value:.3f}"
        body.append([style.display_name(row.label), f"{row.average_rank:.2f}", pooled, p_text, str(row.pooled_n)])
    return header, body


def markdown(ranking: Ranking, reference_name: str) -> str:
    """``ranking.md``: the caption and, where the ranking exists, its table."""
    text = f"# Ranking across cells\n\n{caption(ranking, reference_name)}\n"
    if ranking.exists:
        header, body = rows(ranking, reference_name)
        text += "\n" + markdown_table(Grid([header], body))
    return text


def latex(ranking: Ranking, name: str, reference_name: str) -> str:
    """``ranking.tex``: a booktabs table, or a comment saying why there is no ranking."""
    if not ranking.exists:
        return f"% No ranking across cells in suite {name}: {ranking.reason}\n"
    header, body = rows(ranking, reference_name)
    return latex_table(Grid([[latex_escape(h) for h in header]], [[latex_escape(c) for c in row] for row in body]),
                       latex_escape(caption(ranking, reference_name)), f"tab:{name}-ranking", "lcccc")


def write_ranking(ranking: Ranking, out: Path, name: str, reference_name: str) -> list[Path]:
    """``ranking.md`` and ``ranking.tex`` (which say why, without a ranking), and where the
    ranking exists ``ranking.csv`` (the Friedman test and CD on every row); returns them."""
    paths = [out / "ranking.md", out / "ranking.tex"]
    paths[0].write_text(markdown(ranking, reference_name))
    paths[1].write_text(latex(ranking, name, reference_name))
    if not ranking.exists:
        return paths
    paths.append(out / "ranking.csv")
    ranking.table.assign(friedman_chi2=ranking.friedman[0], friedman_p=ranking.friedman[1],
                         critical_difference=ranking.critical_difference).to_csv(paths[-1], index=False)
    return paths
