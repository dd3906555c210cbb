"""Figures of a suite's training: curves per epoch and the teacher–student gap.

- ``curves_<dataset>_<pair>``: one panel pair per method (the teacher included): above,
  validation top-1 per epoch; below, each logged loss term (``loss_<term>``, one line
  style per term); the line is the mean over seeds, the band ± one standard deviation.
  Every panel pair has its own axes, fitted to its data: a teacher trained for 240 epochs
  does not squeeze its 4-epoch students into a corner, and a loss term of 10 does not
  flatten another method's terms of 1. The two panels of a method share their epochs.
- ``teacher_gap``: student − teacher test top-1 per method (bars, mean ± std over seeds),
  grouped by dataset and pair; negative bars are students below their teacher; a control
  (the summary's ``control`` column) is hatched and named as one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from . import style
from .runs import columns, labels, read_run_metrics

PANELS_PER_ROW = 4
ROW_INCHES = 1.3
MARKED_EPOCHS = 30


def epoch_metrics(suite_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch metrics of the finished runs, long: one row per (run, epoch, quantity)."""
    rows = []
    for run in runs[(runs["status"] == "finished") & (runs["run_id"] != "checkpoint")].itertuples():
        for metrics in read_run_metrics(suite_dir, run.run_id):
            for quantity, value in metrics.items():
                if quantity == "val_top1" or quantity.startswith("loss_"):
                    rows.append({"dataset": run.dataset, "pair": run.pair, "label": run.label, "seed": run.seed,
                                 "epoch": metrics["epoch"], "quantity": quantity, "value": value})
    return pd.DataFrame(rows, columns=["dataset", "pair", "label", "seed", "epoch", "quantity", "value"])


def plot_training_curves(suite_dir: Path, runs: pd.DataFrame, out: Path) -> list[Path]:
    """One ``curves_<dataset>_<pair>`` figure per dataset and pair; returns the files."""
    metrics = epoch_metrics(suite_dir, runs)
    written: list[Path] = []
    for dataset, pair in columns(metrics):
        here = metrics[(metrics["dataset"] == dataset) & (metrics["pair"] == pair)]
        methods = labels(here)
        ncols = min(PANELS_PER_ROW, len(methods))
        blocks = math.ceil(len(methods) / ncols)
        fig, axes = style.figure(style.DOUBLE, aspect=2 * blocks * ROW_INCHES / style.DOUBLE, nrows=2 * blocks,
                                 ncols=ncols)
        for ax in axes.flat:
            ax.set_visible(False)
        for i, label in enumerate(methods):
            acc, loss = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
            acc.sharex(loss)
            acc.tick_params(labelbottom=False)
            loss.xaxis.set_major_locator(MaxNLocator(integer=True))
            mine = here[here["label"] == label]
            terms = sorted(q for q in mine["quantity"].unique() if q.startswith("loss_"))
            _band(acc, mine[mine["quantity"] == "val_top1"], style.color(label), "-", None)
            for k, term in enumerate(terms):
                _band(loss, mine[mine["quantity"] == term], style.color(label), style.LINESTYLES[k % len(style.LINESTYLES)],
                      term.removeprefix("loss_"))
            acc.set_title(style.display_name(label))
            acc.set_ylabel("val top-1 (%)" if i % ncols == 0 else "")
            loss.set_ylabel("loss" if i % ncols == 0 else "")
            loss.set_xlabel("epoch")
            loss.legend(loc="best")
            acc.set_visible(True)
            loss.set_visible(True)
        fig.suptitle(f"{dataset}, {pair}")
        written += style.save(fig, out / f"curves_{style.slug(dataset, pair)}")
    return written


def _band(ax, rows: pd.DataFrame, color: str, linestyle: str, label: str | None) -> None:
    """Mean over seeds per epoch as a line, ± one standard deviation as a band."""
    per_epoch = rows.groupby("epoch")["value"].agg(["mean", "std"]).fillna({"std": 0.0})
    marker = "." if len(per_epoch) <= MARKED_EPOCHS else None  # short runs: every epoch visible, even one
    ax.plot(per_epoch.index, per_epoch["mean"], color=color, linestyle=linestyle, marker=marker, label=label)
    ax.fill_between(per_epoch.index, per_epoch["mean"] - per_epoch["std"], per_epoch["mean"] + per_epoch["std"],
                    color=color, alpha=0.2, linewidth=0)


def plot_teacher_gap(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """The ``teacher_gap`` figure from a report summary; nothing when no column has a teacher."""
    teachers = summary[(summary["role"] == "teacher") & (summary["n"] > 0)].set_index(["dataset", "pair"])["mean"]
    students = summary[(summary["role"] != "teacher") & (summary["n"] > 0)]
    students = students[[key in teachers.index for key in zip(students["dataset"], students["pair"])]]
    if students.empty:
        return []
    cols = list(dict.fromkeys(zip(students["dataset"], students["pair"])))
    methods = list(dict.fromkeys(students["label"]))
    width = 0.8 / len(methods)
    wide = len(cols) > 2
    fig, axes = style.figure(style.DOUBLE if wide else style.SINGLE, aspect=0.45 if wide else 0.8)
    ax = axes[0, 0]
    for k, label in enumerate(methods):
        mine = students[students["label"] == label].set_index(["dataset", "pair"])
        x = [i + (k - (len(methods) - 1) / 2) * width for i, c in enumerate(cols) if c in mine.index]
        present = [c for c in cols if c in mine.index]
        gap = [mine.loc[c, "mean"] - teachers.loc[c] for c in present]
        control = bool(mine["control"].iloc[0]) if "control" in mine else False
        ax.bar(x, gap, width, yerr=np.nan_to_num([mine.loc[c, "std"] for c in present]), color=style.color(label),
               label=style.display_name(label) + (" (control)" if control else ""), hatch="///" if control else None,
               edgecolor="white" if control else None, linewidth=0, error_kw={"linewidth": 0.8})
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cols)), [f"{d}\n{p}" for d, p in cols])
    ax.set_ylabel("student − teacher test top-1 (pp)")
    ax.grid(axis="x", visible=False)
    # above the panel, as wide as the figure: a legend wider than its axes would narrow them
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=min(4 if wide else 2, len(methods)))
    return style.save(fig, stem)
