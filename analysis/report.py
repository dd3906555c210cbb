"""``kdbench report``: a suite's results as tables and figures.

Every number is the test top-1 accuracy (%) of a run, taken under the suite's selection
rule (the manifest's ``selection``: ``best_val`` reads ``test_top1_best_val``, the test
accuracy at the epoch with the best validation accuracy; ``last`` reads
``test_top1_last``), then aggregated over seeds: mean, sample standard deviation (n − 1;
none for a single run) and the number of finished runs. The teacher row is the accuracy of
the teacher weights the students learned from (the teacher run's last epoch, or, for a
teacher loaded from a checkpoint, the ``teacher_test_top1`` its students measured).

Methods are compared with the suite's reference (the manifest's ``reference``, default
``kd``) by the paired t-test over seeds (``analysis.stats``): runs of one dataset, pair and
seed saw the same batches in the same order. Labels the manifest lists under ``controls``
(``{label: what it controls}``) are controls of a method, not contenders: they are printed
as a separate block under the methods, labelled by what they control, are not ranked, and
still get their paired statistics.

This module computes; others write. ``build_report`` reads the suite folder once into a
``Report`` (the runs, the per-cell summary with its statistics, the runs left out, the
ranking and the protocol card); ``write_report`` hands it to the writers:
``analysis.report_tables`` (Markdown and LaTeX, through one ``tables.Markup``),
``analysis.html``, ``analysis.fidelity``, ``analysis.ranking`` and ``analysis.curves``.

Outputs, in ``out_dir`` (default ``<suite_dir>/report``):

- ``table.tex``: a booktabs ``table`` to ``\\input`` (needs only ``booktabs``): methods as
  rows (teacher first, then the no-KD student ``none``, then the suite's methods, then the
  controls block), one column per dataset and teacher→student pair (``transpose`` swaps the
  two). A cell is ``mean ±std`` with the std in ``\\scriptsize``; per column the best method
  mean is bold and the second underlined (means rounded to the two printed decimals; ties
  share a rank; the teacher and the controls are not ranked); ``†`` marks a mean that
  differs from the reference's at p < 0.05; ``[n=k]`` marks a cell with fewer finished runs
  than the suite's seeds. Published numbers are not in it: they were selected on test, so
  they are compared in ``published.tex``, on their rule. The caption states the rule, the number of seeds and the test; the runs left out of
  the means (failed, or not finished) are listed under the table with their reasons.
- ``published.tex``: where the suite quotes published numbers, each beside ours selected
  as the papers selected (the best test epoch, so on test, and labelled so): ``ours ±std
  vs published (ours − published)``, ``‡`` where the published number lies outside our
  seeds' range.
- ``protocol.tex``: the protocol card (``analysis.protocol``): training split, recipe,
  precision, teacher weights, selection rule, the published numbers' sources and the known
  departures from the published protocol and from the authors' code.
- ``paired.tex``: the paired differences to the reference, one cell per label and column:
  mean difference (pp), its 95% confidence interval and p, or "n<3: cannot be computed".
- ``table.md``: the table, the paired differences, the published comparison, the runs left
  out and the protocol card, in Markdown (bold ``**…**``, second ``<u>…</u>``).
- ``report.html``: all of the above and the figures in one self-contained page (see
  ``analysis.html``).
- ``summary.csv``: one row per cell: dataset, pair, label, role, control (what it controls,
  empty for a method), mean, std, n (under the suite's rule), mean_best_val, std_best_val,
  mean_last, std_last, mean_best_test, std_best_test (each rule), seeds, failed, missing,
  paper, delta_paper (ours on the papers' rule, best test epoch, − published),
  paper_outside_spread (the published number outside our seeds' best-test range), reference, paired_n, diff_mean, diff_ci_low, diff_ci_high, t, p_value,
  significant (the paired test against the reference under the suite's rule; empty for the
  teacher, the reference itself, and with fewer than 3 pairs), rank (1 best, 2 second,
  among methods), selection.
- ``runs.csv``: one row per run of the suite, finished or not: run_id, dataset, pair,
  label, role, seed, status, value (the selected accuracy), value_best_val, value_last,
  value_best_test (each rule; a teacher's value is that of the weights its students learned
  from under every rule), error.
- ``figures/``: training curves per dataset and pair (``curves_<dataset>_<pair>``) and the
  student − teacher accuracy gap (``teacher_gap``), each as PDF and PNG (see
  ``analysis.curves``);
- the logit spectra of every finished run (``spectra.csv``, ``spectra_positions.csv``,
  ``figures/spectrum_*``; see ``analysis.spectra``).
- what the students learned from their teachers (``analysis.fidelity``): per run, in
  ``runs.csv``, agreement, kl, nll, ece, confusable and confusable_split; per cell, in
  ``summary.csv``, each one's mean, std and paired test against the reference
  (``<measure>_mean`` … ``_significant``); ``fidelity.md``, ``fidelity.tex`` and
  ``figures/fidelity_<dataset>_<pair>``.
- the ranking across cells (``analysis.ranking``): ``ranking.md``, ``ranking.tex``,
  ``ranking.csv`` and ``figures/critical_difference`` (with one cell, ``ranking.md`` says
  that no ranking exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.store import Manifest, load_manifest

from . import curves, fidelity, ranking
from .html import write_html
from .protocol import protocol_card
from .ranking import Ranking
from .report_tables import write_tables
from .runs import SELECTION_COLUMN, columns, labels, paper_key, suite_runs
from .stats import paired_difference
from .style import display_name

DEFAULT_REFERENCE = "kd"
RULES = tuple(SELECTION_COLUMN)  # best_val, last, best_test
SUMMARY_COLUMNS = ["dataset", "pair", "label", "role", "control", "mean", "std", "n",
                   *(f"{stat}_{rule}" for rule in RULES for stat in ("mean", "std")),
                   "seeds", "failed", "missing", "paper", "delta_paper", "paper_outside_spread", "augment", "augment_note", "reference",
                   "paired_n", "diff_mean", "diff_ci_low", "diff_ci_high", "t", "p_value", "significant"]


def reference_label(manifest: Manifest) -> str:
    """The label paired statistics compare against (the suite's ``reference``, default kd)."""
    return manifest.reference or DEFAULT_REFERENCE


def controls(manifest: Manifest) -> dict[str, str]:
    """Control labels of the suite and what each controls."""
    return dict(manifest.controls)


def run_table(suite_dir: str | Path, frame: pd.DataFrame | None = None) -> tuple[pd.DataFrame, Manifest]:
    """Every run of the suite with its reported accuracy as ``value``, and the manifest;
    ``frame``: the suite's ``suite_runs``, when the caller has read them.

    Columns: run_id, dataset, pair, label, role, seed, status, value, value_best_val,
    value_last, value_best_test, error. A teacher's value is that of the weights its
    students learned from (the manifest's ``teacher_weights``) under every rule. Teachers
    loaded from a checkpoint (no teacher run) appear as one row with run_id ``checkpoint``.
    """
    frame = suite_runs(suite_dir) if frame is None else frame.copy()
    manifest = load_manifest(suite_dir)
    for column in (*SELECTION_COLUMN.values(), "teacher_test_top1"):
        if column not in frame:  # no run has finished
            frame[column] = math.nan
    finished = frame["status"] == "finished"
    teacher = frame["role"] == "teacher"
    teacher_value = frame[SELECTION_COLUMN[manifest.teacher_weights]]
    for rule, column in SELECTION_COLUMN.items():
        frame[f"value_{rule}"] = teacher_value.where(teacher, frame[column]).where(finished)
    frame["value"] = frame[f"value_{manifest.selection}"]
    frame["augment"] = augmentation(frame)
    frame = pd.concat([frame, _checkpoint_teachers(frame)], ignore_index=True)
    return frame[["run_id", "dataset", "pair", "label", "role", "seed", "status", "value",
                  *(f"value_{rule}" for rule in RULES), "augment", "error"]], manifest


def augmentation(frame: pd.DataFrame) -> pd.Series:
    """Each run's training augmentation in words (``standard``, ``strong``, ``standard +
    mixup α=0.2``), from its recipe; missing for a run with no record."""
    def words(row: pd.Series) -> Any:
        kind = row.get("spec.recipe.augment")
        if pd.isna(kind):
            return None
        mixing = [f"{name} α={row.get(f'spec.recipe.{name}_alpha'):g}" for name in ("mixup", "cutmix")
                  if row.get(f"spec.recipe.{name}_alpha", 0) and not pd.isna(row.get(f"spec.recipe.{name}_alpha"))]
        return " + ".join([kind, *mixing])

    return frame.apply(words, axis=1) if len(frame) else pd.Series(dtype=object)


def _checkpoint_teachers(frame: pd.DataFrame) -> pd.DataFrame:
    """A teacher row for each (dataset, pair) whose teacher is a checkpoint, not a run."""
    with_run = set(zip(*[frame.loc[frame["role"] == "teacher", k] for k in ("dataset", "pair")]))
    measured = frame[(frame["status"] == "finished") & frame["teacher_test_top1"].notna()]
    rows = []
    for (dataset, pair), runs in measured.groupby(["dataset", "pair"], sort=False):
        if (dataset, pair) not in with_run:
            value = runs["teacher_test_top1"].iloc[0]
            rows.append({"run_id": "checkpoint", "dataset": dataset, "pair": pair, "label": "teacher",
                         "role": "teacher", "seed": None, "status": "finished", "value": value,
                         **{f"value_{rule}": value for rule in RULES}, "error": None})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """One row per (dataset, pair, label) cell; the columns of ``summary.csv``."""
    reference, controlled = reference_label(manifest), controls(manifest)
    usual = usual_augmentation(runs)
    rows = []
    for dataset, pair in columns(runs):
        paper = manifest.paper.get(paper_key(dataset, pair), {})
        here = runs[(runs["dataset"] == dataset) & (runs["pair"] == pair)]
        baseline = _by_seed(here[here["label"] == reference])
        for label in _ordered(labels(runs), controlled):
            cell = here[here["label"] == label]
            if cell.empty:
                continue
            done = cell[cell["status"] == "finished"]
            row = {"dataset": dataset, "pair": pair, "label": label, "role": cell["role"].iloc[0],
                   "control": controlled.get(label, ""), **_spread(done["value"]),
                   **{f"{k}_{rule}": v for rule in RULES for k, v in _spread(done[f"value_{rule}"]).items() if k != "n"},
                   "seeds": " ".join(str(int(s)) for s in sorted(done["seed"].dropna())),
                   "failed": int((cell["status"] == "failed").sum()),
                   "missing": int((cell["status"] == "missing").sum()),
                   "paper": paper.get(label, math.nan),
                   "augment": " / ".join(sorted(set(cell["augment"].dropna())))}
            # a cell trained otherwise than the rest of the table, or mixing augmentations, says so
            row["augment_note"] = f"[aug: {row['augment']}]" if row["augment"] and row["augment"] != usual else ""
            # against the papers' own rule (their best test epoch), like for like
            row["delta_paper"] = row["mean_best_test"] - row["paper"]
            on_test = done["value_best_test"].dropna()
            row["paper_outside_spread"] = (len(on_test) > 0 and not math.isnan(row["paper"])
                                           and not on_test.min() <= row["paper"] <= on_test.max())
            if row["role"] != "teacher" and label != reference and baseline:
                test = paired_difference(_by_seed(cell), baseline)
                row |= {"reference": reference, "paired_n": test.n, "diff_mean": test.mean, "diff_ci_low": test.ci_low,
                        "diff_ci_high": test.ci_high, "t": test.t, "p_value": test.p_value,
                        "significant": test.significant if test.computable else None}
            rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"paired_n": "Int64", "significant": "boolean"})
    ranked = summary[(summary["role"] != "teacher") & (summary["control"] == "")]
    ranked = ranked.assign(rounded=lambda s: s["mean"].round(2))
    summary["rank"] = ranked.groupby(["dataset", "pair"])["rounded"].rank(method="dense", ascending=False).astype("Int64")
    summary["selection"] = manifest.selection
    return summary


def usual_augmentation(runs: pd.DataFrame) -> str | None:
    """The augmentation most student runs trained with (the table's default)."""
    students = runs.loc[runs["role"] != "teacher", "augment"].dropna()
    return students.mode().iloc[0] if len(students) else None


def _ordered(found: list[str], controlled: dict[str, str]) -> list[str]:
    """Labels in report order with the controls last, as the manifest lists them."""
    return [label for label in found if label not in controlled] + [label for label in controlled if label in found]


def _spread(values: pd.Series) -> dict[str, Any]:
    """Mean, sample std (n − 1; nan for one value) and count of the non-missing values."""
    values = values.dropna().astype(float)
    return {"mean": values.mean() if len(values) else math.nan,
            "std": values.std(ddof=1) if len(values) > 1 else math.nan, "n": len(values)}


def _by_seed(cell: pd.DataFrame) -> dict[int, float]:
    """Seed → selected accuracy of the cell's finished runs."""
    done = cell[(cell["status"] == "finished") & cell["seed"].notna()]
    return {int(seed): float(value) for seed, value in zip(done["seed"], done["value"])}


def seed_count(runs: pd.DataFrame) -> int:
    """How many seeds the suite runs each student with (finished or not)."""
    return runs.loc[runs["role"] != "teacher", "seed"].dropna().nunique()


def left_out(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are not in the means: failed or not finished, with their reason."""
    out = runs[runs["status"] != "finished"].copy()
    out["error"] = out["error"].fillna("").map(lambda e: e.strip().splitlines()[0][:120] if e.strip() else "")
    return out


@dataclass(frozen=True)
class Report:
    """A suite's report, computed once: every number its tables, figures and page show.
    The writers (``report_tables``, ``html``, ``fidelity``, ``ranking``, ``curves``) only
    format it."""

    suite_dir: Path
    name: str  # the suite's name
    manifest: Manifest
    reference: str  # the label paired statistics compare against
    runs: pd.DataFrame  # run_table's columns and the fidelity measures of each run
    summary: pd.DataFrame  # one row per cell: summarise's columns and the fidelity summary
    missing: pd.DataFrame  # the runs left out of the means, with their reason
    n_seeds: int
    ranked: Ranking
    card: list[tuple[str, str, str]]  # the protocol card: (section, item, value)
    confusable_k: int

    @property
    def reference_name(self) -> str:
        return display_name(self.reference)


def build_report(suite_dir: str | Path, confusable_k: int = fidelity.DEFAULT_K) -> Report:
    """Read a suite's results folder and compute its report: runs, per-cell statistics,
    fidelity, the ranking across cells and the protocol card."""
    suite_dir = Path(suite_dir)
    every = suite_runs(suite_dir)
    runs, manifest = run_table(suite_dir, every)
    runs = pd.concat([runs, fidelity.fidelity_columns(suite_dir, runs, confusable_k)], axis=1)
    reference = reference_label(manifest)
    summary = fidelity.summarise(runs, summarise(runs, manifest), reference, confusable_k)
    return Report(suite_dir, manifest.suite or suite_dir.name, manifest, reference, runs, summary, left_out(runs),
                  seed_count(runs), ranking.rank_methods(summary, runs, reference), protocol_card(every, manifest),
                  confusable_k)


def write_report(suite_dir: str | Path, out_dir: str | Path | None = None, transpose: bool = False,
                 confusable_k: int = fidelity.DEFAULT_K) -> list[Path]:
    """Write the tables and figures of a suite's results folder; returns the files written.

    See the module docstring for what each file contains; ``confusable_k``: how many of
    each class's most confused classes make its confusable pairs (``analysis.fidelity``).
    """
    report = build_report(suite_dir, confusable_k)
    out = Path(out_dir) if out_dir is not None else report.suite_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.csv", out / "runs.csv"]
    report.summary.to_csv(written[0], index=False)
    report.runs.to_csv(written[1], index=False)
    written += write_tables(report, out, transpose)
    written += fidelity.write_tables(report.summary, out, report.name, report.reference_name, confusable_k)
    written += ranking.write_ranking(report.ranked, out, report.name, report.reference_name)
    figures = ranking.plot_critical_difference(report.ranked, out / "figures" / "critical_difference")
    figures += fidelity.plot_fidelity(report.summary, out / "figures")
    figures += curves.plot_training_curves(report.suite_dir, report.runs, out / "figures")
    figures += curves.plot_teacher_gap(report.summary, out / "figures" / "teacher_gap")
    if (report.runs["status"] == "finished").any():  # runs keep their test logits: the spectra come with the report
        from .spectra import write_spectra

        figures += write_spectra(report.suite_dir, out)
    written += figures
    written.append(write_html(out / "report.html", report, [f for f in figures if f.suffix == ".png"]))
    return written
