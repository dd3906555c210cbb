"""What a student learned from its teacher: fidelity, calibration and confusable classes.

Top-1 accuracy says how often a student is right; Stanton et al. ("Does Knowledge
Distillation Really Work?", NeurIPS 2021) ask how closely it follows its teacher, and
FiGKD claims something finer still: that the student inherits the teacher's decisions
between look-alike classes. Every number here comes from a finished run's final test
logits (``test_logits.pt``: the final weights, i.e. the last epoch, whatever the suite's
selection rule) and its teacher's (``teacher_logits.pt``, which a run that learned from a
teacher keeps; for older runs, the teacher run's own ``test_logits.pt``):

- ``agreement``: % of test samples where the student's top-1 class is the teacher's;
- ``kl``: KL(teacher ‖ student) at T = 1, in nats, the mean over test samples of
  Σ_c p_t(c) (log p_t(c) − log p_s(c));
- ``nll``: the student's negative log-likelihood of the true class, nats, mean over samples;
- ``ece``: expected calibration error (%, 15 equal-width confidence bins, L1; torchmetrics'
  ``multiclass_calibration_error``);
- ``confusable``: accuracy (%) on the teacher's confusable pairs. For each class y, its k
  most confused classes ``partners[y]``: the classes the teacher most often predicts for
  samples of y, in its confusion matrix (row y, counts; ties, frequent on a small split
  where most counts are 0, broken by the teacher's mean probability of the class on y's
  samples). Each test sample of class y and each partner c is one binary decision,
  correct when the student's logit of y is strictly above its logit of c; the metric is
  the % of correct decisions. The confusion matrix is never the one of the split scored:
  it is the teacher's on the validation split (``confusable_split`` = ``val``); a run set
  without the teacher's validation logits (older runs, or ``val_fraction: 0``) falls back
  to two-fold cross-fitting on the test split (``test, 2-fold cross-fit``): the partners
  scoring the even-indexed test samples come from the teacher's confusions on the
  odd-indexed ones, and the other way round. A class without samples in the fitting split
  has no partners, and its samples are left out of the metric.

The teacher's own row gets nll, ece and confusable (its own accuracy on the pairs it
confuses, scored on test); agreement and kl are the student's, not the teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from kdbench import store
from kdbench.store.checkpoints import safe_load
from kdbench.errors import CheckpointError, ConfigError, KDBenchError
from kdbench.store import runs_dir

from .runs import columns, read_test_logits
from . import style
from .cells import paired_cell
from .stats import paired_difference
from .style import display_name
from .tables import MARKDOWN, Grid, latex_escape, latex_table, markdown_table

DEFAULT_K = 3
ECE_BINS = 15
VAL_SPLIT = "val"
CROSS_FIT = "test, 2-fold cross-fit"


@dataclass(frozen=True)
class Metric:
    """One fidelity column: its name in the CSVs, its heading, and which way is better."""

    key: str
    heading: str
    short: str  # a figure panel's title
    higher_is_better: bool
    decimals: int = 2


METRICS = (
    Metric("agreement", "Top-1 agreement with the teacher (%)", "Agreement (%)", True),
    Metric("kl", "KL(teacher ‖ student) at T = 1 (nats)", "KL(T ‖ S) (nats)", False, 3),
    Metric("nll", "Negative log-likelihood (nats)", "NLL (nats)", False, 3),
    Metric("ece", f"Expected calibration error (%, {ECE_BINS} bins)", "ECE (%)", False),
    Metric("confusable", "Accuracy on the teacher's confusable pairs (%)", "Confusable pairs (%)", True),
)
RUN_COLUMNS = [m.key for m in METRICS] + ["confusable_split"]


# --- the metrics of one run ------------------------------------------------------------------

def agreement(student: Tensor, teacher: Tensor) -> float:
    """% of samples whose top-1 class is the same for both sets of logits."""
    return 100.0 * (student.argmax(1) == teacher.argmax(1)).double().mean().item()


def kl_divergence(teacher: Tensor, student: Tensor) -> float:
    """KL(teacher ‖ student) of the softmaxes at T = 1, nats, mean over samples."""
    log_t, log_s = F.log_softmax(teacher.double(), 1), F.log_softmax(student.double(), 1)
    return (log_t.exp() * (log_t - log_s)).sum(1).mean().item()


def nll(logits: Tensor, labels: Tensor) -> float:
    """Negative log-likelihood of the true class, nats, mean over samples."""
    return F.cross_entropy(logits.double(), labels.long()).item()


def ece(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (%) of the top-1 confidence, ``bins`` equal-width bins."""
    probs = F.softmax(logits.double(), 1).float()
    return 100.0 * multiclass_calibration_error(probs, labels.long(), logits.shape[1], n_bins=bins, norm="l1").item()


def confusable_classes(logits: Tensor, labels: Tensor, num_classes: int, k: int) -> Tensor:
    """Each class's ``k`` most confused classes (rows of a ``num_classes × k`` tensor, most
    confused first): confusion counts of ``logits``' top-1 on the class's samples, ties
    broken by the mean probability; a class without samples gets a row of -1."""
    k = min(k, num_classes - 1)
    labels = labels.long()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((labels, logits.argmax(1)), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    probs = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(
        0, labels, F.softmax(logits.double(), 1))
    present = counts.sum(1) > 0
    partners = torch.full((num_classes, k), -1, dtype=torch.long)
    for y in torch.nonzero(present).flatten().tolist():
        others = [c for c in range(num_classes) if c != y]
        # lexsort: the last key is the primary one
        order = np.lexsort((-probs[y, others].numpy(), -counts[y, others].numpy()))
        partners[y] = torch.tensor([others[i] for i in order[:k]])
    return partners


def pair_decisions(logits: Tensor, labels: Tensor, partners: Tensor) -> tuple[int, int]:
    """(correct, total) binary decisions between each sample's class and each of its
    class's partners: correct when the logit of the true class is strictly higher."""
    labels = labels.long()
    rows = partners[labels]  # N × k
    valid = rows >= 0
    true = logits.gather(1, labels[:, None])
    rival = logits.gather(1, rows.clamp(min=0))
    return int(((true > rival) & valid).sum()), int(valid.sum())


@dataclass(frozen=True)
class Confusable:
    """Where the confusable pairs come from: for each fold, the test samples it scores
    (a mask) and the partners fitted on other samples."""

    split: str
    folds: tuple[tuple[Tensor, Tensor], ...]

    def accuracy(self, logits: Tensor, labels: Tensor) -> float:
        """% correct pair decisions of ``logits`` over the folds (nan without any pair)."""
        correct = total = 0
        for mask, partners in self.folds:
            c, t = pair_decisions(logits[mask], labels[mask], partners)
            correct, total = correct + c, total + t
        return 100.0 * correct / total if total else math.nan


def fit_confusable(test: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor] | None, k: int) -> Confusable:
    """The teacher's confusable pairs: from its validation logits, else cross-fitted on the
    test split (see the module docstring)."""
    logits, labels = test
    num_classes = logits.shape[1]
    if val is not None and len(val[1]):
        return Confusable(VAL_SPLIT, ((torch.ones(len(labels), dtype=torch.bool),
                                       confusable_classes(val[0], val[1], num_classes, k)),))
    even = torch.arange(len(labels)) % 2 == 0
    return Confusable(CROSS_FIT, tuple((~fit, confusable_classes(logits[fit], labels[fit], num_classes, k))
                                       for fit in (even, ~even)))


def run_metrics(logits: Tensor, labels: Tensor, teacher: Tensor | None, confusable: Confusable | None
                ) -> dict[str, float | str]:
    """The fidelity columns of one run; the teacher's own, and a run without teacher logits,
    have nan agreement and kl."""
    return {
        "agreement": agreement(logits, teacher) if teacher is not None else math.nan,
        "kl": kl_divergence(teacher, logits) if teacher is not None else math.nan,
        "nll": nll(logits, labels),
        "ece": ece(logits, labels),
        "confusable": confusable.accuracy(logits, labels) if confusable is not None else math.nan,
        "confusable_split": confusable.split if confusable is not None else "",
    }


# --- a suite's runs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherLogits:
    """A column's teacher on the test split, and on the validation split where saved."""

    test: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    source: str  # the run folder whose file they come from


def read_teacher_logits(suite_dir: Path, run_ids: Iterable[str]) -> TeacherLogits | None:
    """The teacher's logits from the first of ``run_ids`` with a readable ``teacher_logits.pt``."""
    for run_id in run_ids:
        path = runs_dir(suite_dir) / run_id / store.TEACHER_LOGITS
        if not path.exists():
            continue
        try:
            saved = safe_load(path)
            test = (saved["test"]["logits"].double(), saved["test"]["labels"])
            val = (saved["val"]["logits"].double(), saved["val"]["labels"]) if "val" in saved else None
        except (CheckpointError, KeyError, TypeError, AttributeError):
            continue
        return TeacherLogits(test, val, run_id)
    return None


def column_teacher(suite_dir: Path, here: pd.DataFrame) -> TeacherLogits | None:
    """The teacher of one (dataset, pair): a student's ``teacher_logits.pt``, else the
    teacher run's ``test_logits.pt`` (no validation logits), else None."""
    finished = here[(here["status"] == "finished") & (here["run_id"] != "checkpoint")]
    found = read_teacher_logits(suite_dir, finished.loc[finished["role"] != "teacher", "run_id"])
    if found is not None:
        return found
    for run_id in finished.loc[finished["role"] == "teacher", "run_id"]:
        test = read_test_logits(suite_dir, run_id)
        if test is not None:
            return TeacherLogits(test, None, run_id)
    return None


def fidelity_columns(suite_dir: str | Path, runs: pd.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
    """``RUN_COLUMNS`` for every row of ``runs`` (``report.run_table``), on its index; nan
    for a run that has not finished or has no test logits."""
    if k < 1:
        raise ConfigError(f"confusable pairs need at least one confused class per class (--confusable-k), got {k}")
    suite_dir = Path(suite_dir)
    out = pd.DataFrame(math.nan, index=runs.index, columns=RUN_COLUMNS).astype({"confusable_split": object})
    out["confusable_split"] = ""
    for dataset, pair in columns(runs):
        here = runs[(runs["dataset"] == dataset) & (runs["pair"] == pair)]
        teacher = column_teacher(suite_dir, here)
        confusable = fit_confusable(teacher.test, teacher.val, k) if teacher is not None else None
        for index, run in here[here["status"] == "finished"].iterrows():
            if run["role"] == "teacher":
                if teacher is not None:
                    row = run_metrics(*teacher.test, None, confusable)
                    out.loc[index, RUN_COLUMNS] = [row[c] for c in RUN_COLUMNS]
                continue
            own = read_test_logits(suite_dir, run["run_id"])
            if own is None:
                continue
            if teacher is not None and not torch.equal(own[1], teacher.test[1]):
                raise KDBenchError(f"run {run['run_id']} was tested on other samples than its teacher's logits in "
                                   f"run {teacher.source} ({dataset}, {pair}): the two cannot be compared")
            row = run_metrics(*own, teacher.test[0] if teacher is not None else None, confusable)
            out.loc[index, RUN_COLUMNS] = [row[c] for c in RUN_COLUMNS]
    return out


# --- per cell, with the paired statistics -----------------------------------------------------

def summary_columns() -> list[str]:
    """The fidelity columns of ``summary.csv``, per metric: mean, std and the paired test
    against the reference (n, mean difference, 95% CI, p, significant)."""
    return [f"{m.key}_{stat}" for m in METRICS for stat in ("mean", "std", "paired_n", "diff_mean", "diff_ci_low",
                                                            "diff_ci_high", "p_value", "significant")] + [
        "confusable_split", "confusable_k"]


def summarise(runs: pd.DataFrame, summary: pd.DataFrame, reference: str, k: int) -> pd.DataFrame:
    """``summary``'s rows with ``summary_columns()`` added: each metric's mean ± std over the
    cell's finished runs and the paired t-test against ``reference`` over seeds, as for
    accuracy (teacher and reference rows have no test)."""
    added = []
    for _, row in summary.iterrows():
        here = runs[(runs["dataset"] == row["dataset"]) & (runs["pair"] == row["pair"])]
        cell = here[(here["label"] == row["label"]) & (here["status"] == "finished")]
        baseline = here[(here["label"] == reference) & (here["status"] == "finished")]
        values: dict[str, object] = {}
        for metric in METRICS:
            data = cell[metric.key].dropna().astype(float)
            values[f"{metric.key}_mean"] = data.mean() if len(data) else math.nan
            values[f"{metric.key}_std"] = data.std(ddof=1) if len(data) > 1 else math.nan
            tested = row["role"] != "teacher" and row["label"] != reference and len(baseline)
            test = paired_difference(_by_seed(cell, metric.key), _by_seed(baseline, metric.key)) if tested else None
            values |= {
                f"{metric.key}_paired_n": test.n if test else None,
                f"{metric.key}_diff_mean": test.mean if test else math.nan,
                f"{metric.key}_diff_ci_low": test.ci_low if test else math.nan,
                f"{metric.key}_diff_ci_high": test.ci_high if test else math.nan,
                f"{metric.key}_p_value": test.p_value if test else math.nan,
                f"{metric.key}_significant": test.significant if test and test.computable else None,
            }
        splits = sorted(set(here["confusable_split"].dropna()) - {""})
        values["confusable_split"] = " / ".join(splits)
        values["confusable_k"] = k
        added.append(values)
    frame = pd.DataFrame(added, index=summary.index, columns=summary_columns())
    types = {f"{m.key}_paired_n": "Int64" for m in METRICS} | {f"{m.key}_significant": "boolean" for m in METRICS}
    return pd.concat([summary, frame.astype(types)], axis=1)


def _by_seed(cell: pd.DataFrame, column: str) -> dict[int, float]:
    """Seed → ``column`` of the cell's runs that have both."""
    done = cell.dropna(subset=["seed", column])
    return {int(seed): float(value) for seed, value in zip(done["seed"], done[column])}


# --- tables ----------------------------------------------------------------------------------

def caption(summary: pd.DataFrame, reference_name: str, k: int) -> str:
    """What the fidelity tables show, in words; ``summary`` says which split the confusable
    pairs come from."""
    splits = " / ".join(dict.fromkeys(s for s in summary["confusable_split"] if s))
    return (f"What each student learned from its teacher, from the final weights' test logits (the last epoch, "
            f"whatever the selection rule): mean ± std over seeds of each measure; †: differs from "
            f"{reference_name} at p < 0.05 (two-sided paired t-test over seeds, as for accuracy). Confusable pairs: "
            f"each class's {k} most confused classes in the teacher's confusion matrix on the "
            f"{splits or 'no'} split, never the scored one; the score is the % of the student's binary decisions "
            f"between a test sample's class and each of those classes that are right. Agreement and KL are "
            f"the students' alone (the teacher row shows the teacher's own NLL, ECE and confusable-pair accuracy).")


def _grid(summary: pd.DataFrame, text) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """The columns (dataset, pair) and, per label in ``summary`` order, its row name and cells."""
    cols = list(dict.fromkeys(zip(summary["dataset"], summary["pair"])))
    cells = {(r["dataset"], r["pair"], r["label"]): r for _, r in summary.iterrows()}
    rows = []
    for label in dict.fromkeys(summary["label"]):
        first = summary[summary["label"] == label].iloc[0]
        name = display_name(label) + (f" (control: {first['control']})" if first["control"] else "")
        rows.append((name, [text(cells.get((*c, label))) for c in cols]))
    return cols, rows


def value_text(metric: Metric, row: pd.Series | None) -> str:
    """``mean ± std`` and † for a significant paired difference, or – without a value."""
    if row is None or pd.isna(row[f"{metric.key}_mean"]):
        return "–"
    text = f"{row[f'{metric.key}_mean']:.{metric.decimals}f}"
    if not pd.isna(row[f"{metric.key}_std"]):
        text += f" ± {row[f'{metric.key}_std']:.{metric.decimals}f}"
    significant = row[f"{metric.key}_significant"]
    return text + ("†" if not pd.isna(significant) and bool(significant) else "")


def paired_text(metric: Metric, row: pd.Series | None) -> str:
    """``Δ [low, high], p (n)`` against the reference, as the accuracy's paired cells."""
    return paired_cell(row, f"{metric.key}_", metric.decimals).written(MARKDOWN)


def markdown(summary: pd.DataFrame, reference_name: str, k: int) -> str:
    """``fidelity.md``: per measure, the values and the paired differences to the reference."""
    text = f"# Fidelity, calibration and confusable classes\n\n{caption(summary, reference_name, k)}\n"
    for metric in METRICS:
        cols, rows = _grid(summary, lambda row: value_text(metric, row))
        text += f"\n## {metric.heading}\n\n" + markdown_table(Grid([["Method", *(f"{d} {p}" for d, p in cols)]],
                                                                    [[name, *cells] for name, cells in rows]))
        tested = summary[summary[f"{metric.key}_paired_n"].notna()]
        if len(tested):
            cols, rows = _grid(tested, lambda row: paired_text(metric, row))
            text += (f"\n### {metric.heading}: paired difference to {reference_name}\n\n"
                     + markdown_table(Grid([["Method", *(f"{d} {p}" for d, p in cols)]], [[n, *c] for n, c in rows])))
    return text


def latex(summary: pd.DataFrame, name: str, reference_name: str, k: int) -> str:
    """``fidelity.tex``: one booktabs table per measure, each cell ``mean ± std`` over its
    paired difference to the reference in small type."""
    def stacked(value: str, paired: str) -> str:
        if value == "–":
            return "--"
        lines = latex_escape(value) + (f" \\\\ {{\\scriptsize {latex_escape(paired)}}}" if paired != "–" else "")
        return f"\\begin{{tabular}}[t]{{@{{}}c@{{}}}}{lines}\\end{{tabular}}"

    tables = []
    for metric in METRICS:
        cols, values = _grid(summary, lambda row: value_text(metric, row))
        _, paired = _grid(summary, lambda row: paired_text(metric, row))
        header = [["Method", *(latex_escape(d) for d, _ in cols)], ["", *(latex_escape(p) for _, p in cols)]]
        body = [[latex_escape(label), *(stacked(v, p) for v, p in zip(cells, paired_cells))]
                for (label, cells), (_, paired_cells) in zip(values, paired)]
        text = latex_escape(f"{metric.heading}. {caption(summary, reference_name, k)}")
        tables.append(latex_table(Grid(header, body), text, f"tab:{name}-{metric.key}", "l" + "c" * len(cols)))
    return "\n".join(tables)


def write_tables(summary: pd.DataFrame, out: Path, name: str, reference_name: str, k: int) -> list[Path]:
    """``fidelity.md`` and ``fidelity.tex`` in ``out``; returns both."""
    paths = [out / "fidelity.md", out / "fidelity.tex"]
    paths[0].write_text(markdown(summary, reference_name, k))
    paths[1].write_text(latex(summary, name, reference_name, k))
    return paths


# --- figure ----------------------------------------------------------------------------------

def plot_fidelity(summary: pd.DataFrame, out: Path) -> list[Path]:
    """``fidelity_<dataset>_<pair>`` per cell: one panel per measure, one row per method
    (mean ± std over seeds, the method's colour), the teacher's own value as a dashed line
    where it has one; returns the files (none for a cell without any measure)."""
    written: list[Path] = []
    for dataset, pair in dict.fromkeys(zip(summary["dataset"], summary["pair"])):
        here = summary[(summary["dataset"] == dataset) & (summary["pair"] == pair)]
        students = here[here["role"] != "teacher"]
        if not students[[f"{m.key}_mean" for m in METRICS]].notna().any().any():
            continue
        fig, axes = style.figure(style.DOUBLE, aspect=0.14 + 0.04 * len(students), ncols=len(METRICS), sharey=True)
        names = [display_name(label) + (" *" if control else "")
                 for label, control in zip(students["label"], students["control"])]
        y = np.arange(len(students))[::-1]
        for ax, metric in zip(axes[0], METRICS):
            for yi, (_, row) in zip(y, students.iterrows()):
                mean, std = row[f"{metric.key}_mean"], row[f"{metric.key}_std"]
                ax.errorbar(mean, yi, xerr=None if pd.isna(std) else std, fmt="o", color=style.color(row["label"]),
                            capsize=2)
            teacher = here.loc[here["role"] == "teacher", f"{metric.key}_mean"].dropna()
            if len(teacher):
                ax.axvline(teacher.iloc[0], color=style.TEACHER_COLOR, linestyle="--", linewidth=0.8,
                           label=style.TEACHER_NAME)
            ax.set_title(metric.short)
            ax.set_xlabel("higher is better" if metric.higher_is_better else "lower is better")
        axes[0, 0].set_yticks(y, names)
        fig.suptitle(f"{dataset}, {pair}: mean ± std over seeds (* control; dashed: the teacher's own)",
                     fontsize=style.RC["axes.titlesize"])
        written += style.save(fig, out / f"fidelity_{style.slug(dataset, pair)}")
    return written
