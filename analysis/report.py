"""``kdbench report``: a suite's results as tables and figures.

Every number is the test top-1 accuracy (%) of a run, taken under the suite's selection
rule (the manifest's ``selection``: ``best_val`` reads ``test_top1_best_val``, the test
accuracy at the epoch with the best validation accuracy; ``last`` reads
``test_top1_last``), then aggregated over seeds: mean, sample standard deviation (n − 1;
none for a single run) and the number of finished runs. The teacher row is the accuracy of
the teacher weights the students learned from (the teacher run's last epoch, or, for a
teacher loaded from a checkpoint, the ``teacher_test_top1`` its students measured).

Outputs, in ``out_dir`` (default ``<suite_dir>/report``):

- ``table.tex``: a booktabs ``table`` to ``\\input`` (needs only ``booktabs``): methods as
  rows (teacher first, then the no-KD student ``none``, then the suite's methods), one column
  per dataset and teacher→student pair (``transpose`` swaps the two). A cell is
  ``mean ±std`` with the std in ``\\scriptsize``; per column the best student mean is bold
  and the second underlined (means rounded to the two printed decimals; ties share a
  rank; the teacher is not ranked); ``[n=k]`` marks a cell with fewer finished runs than
  the suite's seeds; ``(x)`` is the published number where the manifest's ``paper`` has one.
  The caption states the rule and the number of seeds; the runs left out of the means
  (failed, or not finished) are listed under the table with their reasons.
- ``table.md``: the same table in Markdown (bold ``**…**``, second ``<u>…</u>``) and the
  same list of runs left out.
- ``summary.csv``: one row per cell: dataset, pair, label, role, mean, std, n, seeds,
  failed, missing, paper, delta_paper (ours − published), rank (1 best, 2 second, among
  students), selection.
- ``runs.csv``: one row per run of the suite, finished or not: run_id, dataset, pair,
  label, role, seed, status, value (the selected accuracy), error.
- ``figures/``: training curves per dataset and pair (``curves_<dataset>_<pair>``) and the
  student − teacher accuracy gap (``teacher_gap``), each as PDF and PNG (see
  ``analysis.curves``);
- the logit spectra of every finished run (``spectra.csv``, ``spectra_positions.csv``,
  ``figures/spectrum_*``; see ``analysis.spectra``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.results import load_manifest

from . import curves
from .runs import (
    SELECTION_TEXT,
    columns,
    labels,
    paper_key,
    selection_column,
    suite_runs,
)
from .style import display_name
from .tables import latex_escape, latex_table, markdown_table

TEACHER_VALUE = "test_top1_last"  # the teacher's final weights are what students distil from


def run_table(suite_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every run of the suite with its reported accuracy as ``value``, and the manifest.

    Columns: run_id, dataset, pair, label, role, seed, status, value, error. Teachers
    loaded from a checkpoint (no teacher run) appear as one row with run_id ``checkpoint``.
    """
    frame = suite_runs(suite_dir)
    manifest = load_manifest(suite_dir)
    selected = selection_column(manifest)
    for column in (selected, TEACHER_VALUE, "teacher_test_top1"):
        if column not in frame:  # no run has finished
            frame[column] = math.nan
    finished = frame["status"] == "finished"
    teacher = frame["role"] == "teacher"
    frame["value"] = frame[TEACHER_VALUE].where(teacher, frame[selected]).where(finished)
    frame = pd.concat([frame, _checkpoint_teachers(frame)], ignore_index=True)
    return frame[["run_id", "dataset", "pair", "label", "role", "seed", "status", "value", "error"]], manifest


def _checkpoint_teachers(frame: pd.DataFrame) -> pd.DataFrame:
    """A teacher row for each (dataset, pair) whose teacher is a checkpoint, not a run."""
    with_run = set(zip(*[frame.loc[frame["role"] == "teacher", k] for k in ("dataset", "pair")]))
    measured = frame[(frame["status"] == "finished") & frame["teacher_test_top1"].notna()]
    rows = []
    for (dataset, pair), runs in measured.groupby(["dataset", "pair"], sort=False):
        if (dataset, pair) not in with_run:
            rows.append({"run_id": "checkpoint", "dataset": dataset, "pair": pair, "label": "teacher",
                         "role": "teacher", "seed": None, "status": "finished",
                         "value": runs["teacher_test_top1"].iloc[0], "error": None})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per (dataset, pair, label) cell; the columns of ``summary.csv``."""
    rows = []
    for dataset, pair in columns(runs):
        paper = manifest.get("paper", {}).get(paper_key(dataset, pair), {})
        for label in labels(runs):
            cell = runs[(runs["dataset"] == dataset) & (runs["pair"] == pair) & (runs["label"] == label)]
            if cell.empty:
                continue
            done = cell[cell["status"] == "finished"]
            values = done["value"].astype(float)
            mean = values.mean() if len(values) else math.nan
            rows.append({
                "dataset": dataset, "pair": pair, "label": label, "role": cell["role"].iloc[0],
                "mean": mean, "std": values.std(ddof=1) if len(values) > 1 else math.nan, "n": len(values),
                "seeds": " ".join(str(int(s)) for s in sorted(done["seed"].dropna())),
                "failed": int((cell["status"] == "failed").sum()), "missing": int((cell["status"] == "missing").sum()),
                "paper": paper.get(label, math.nan), "delta_paper": mean - paper.get(label, math.nan),
            })
    summary = pd.DataFrame(rows, columns=["dataset", "pair", "label", "role", "mean", "std", "n", "seeds", "failed",
                                          "missing", "paper", "delta_paper"])
    students = summary[summary["role"] != "teacher"].assign(rounded=lambda s: s["mean"].round(2))
    summary["rank"] = students.groupby(["dataset", "pair"])["rounded"].rank(method="dense", ascending=False).astype("Int64")
    summary["selection"] = manifest.get("selection", "best_val")
    return summary


def seed_count(runs: pd.DataFrame) -> int:
    """How many seeds the suite runs each student with (finished or not)."""
    return runs.loc[runs["role"] != "teacher", "seed"].dropna().nunique()


def left_out(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are not in the means: failed or not finished, with their reason."""
    out = runs[runs["status"] != "finished"].copy()
    out["error"] = out["error"].fillna("").map(lambda e: e.strip().splitlines()[0][:120] if e.strip() else "")
    return out


def write_report(suite_dir: str | Path, out_dir: str | Path | None = None, transpose: bool = False) -> list[Path]:
    """Write the tables and figures of a suite's results folder; returns the files written.

    See the module docstring for what each file contains.
    """
    suite_dir = Path(suite_dir)
    runs, manifest = run_table(suite_dir)
    out = Path(out_dir) if out_dir is not None else suite_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, manifest)
    name = manifest.get("suite", suite_dir.name)
    n_seeds = seed_count(runs)
    missing = left_out(runs)

    written = [out / "summary.csv", out / "runs.csv", out / "table.md", out / "table.tex"]
    summary.to_csv(written[0], index=False)
    runs.to_csv(written[1], index=False)
    written[2].write_text(_markdown(summary, missing, name, manifest, n_seeds, transpose))
    written[3].write_text(_latex(summary, missing, name, manifest, n_seeds, transpose))
    written += curves.plot_training_curves(suite_dir, runs, out / "figures")
    written += curves.plot_teacher_gap(summary, out / "figures" / "teacher_gap")
    if (runs["status"] == "finished").any():  # runs keep their test logits: the spectra come with the report
        from .spectra import write_spectra

        written += write_spectra(suite_dir, out)
    return written


def _caption(name: str, manifest: dict[str, Any], n_seeds: int, summary: pd.DataFrame, left: int) -> str:
    rule = manifest.get("selection", "best_val")
    text = (f"Test top-1 accuracy (%) on suite {name}: mean ± std over {n_seeds} seeds, each run taken at "
            f"{SELECTION_TEXT[rule]} (selection rule: {rule}). The teacher row is the teacher the students learned "
            f"from. For each dataset and pair the best student is bold and the second underlined. "
            f"[n=k]: only k of {n_seeds} runs finished.")
    if summary["paper"].notna().any():
        text += " In parentheses: the published number."
    if left:
        text += f" {left} run(s) failed or did not finish and are not in the means (listed below)."
    return text


def _cell(row: pd.Series | None, n_seeds: int, tex: bool) -> str:
    """A cell's text in LaTeX (``tex``) or Markdown."""
    if row is None:
        return "--" if tex else "–"
    text = "--" if tex else "–"
    if row["n"]:
        text = f"{row['mean']:.2f}"
        rank = 0 if pd.isna(row["rank"]) else row["rank"]
        if rank == 1:
            text = f"\\textbf{{{text}}}" if tex else f"**{text}**"
        elif rank == 2:
            text = f"\\underline{{{text}}}" if tex else f"<u>{text}</u>"
        if not math.isnan(row["std"]):
            text += f"{{\\scriptsize$\\pm${row['std']:.2f}}}" if tex else f" ± {row['std']:.2f}"
    extras = []
    if row["role"] != "teacher" and row["n"] < n_seeds:
        extras.append(f"[n={row['n']}]")
    if not math.isnan(row["paper"]):
        extras.append(f"({row['paper']:.2f})")
    if extras:
        text += f" {{\\scriptsize {' '.join(extras)}}}" if tex else " " + " ".join(extras)
    return text


def _grid(summary: pd.DataFrame, n_seeds: int, transpose: bool, tex: bool) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Header rows, body rows and the body rows followed by a rule, as cell text."""
    escape = latex_escape if tex else str
    cols = list(dict.fromkeys(zip(summary["dataset"], summary["pair"])))
    methods = list(dict.fromkeys(summary["label"]))
    cells = {(r["dataset"], r["pair"], r["label"]): r for _, r in summary.iterrows()}

    def cell(column: tuple[str, str], label: str) -> str:
        return _cell(cells.get((*column, label)), n_seeds, tex)

    if transpose:
        header = [["Dataset", "Pair", *(escape(display_name(m)) for m in methods)]]
        body = [[escape(d), escape(p), *(cell((d, p), m) for m in methods)] for d, p in cols]
        return header, body, []
    header = [["Method", *(escape(d) for d, _ in cols)], ["", *(escape(p) for _, p in cols)]]
    body = [[escape(display_name(m)), *(cell(c, m) for c in cols)] for m in methods]
    return header, body, [0] if methods[:1] == ["teacher"] else []


def _markdown(summary: pd.DataFrame, missing: pd.DataFrame, name: str, manifest: dict[str, Any], n_seeds: int,
              transpose: bool) -> str:
    header, body, _ = _grid(summary, n_seeds, transpose, tex=False)
    merged = [" ".join(part for part in parts if part) for parts in zip(*header)]
    text = f"# {name}\n\n{_caption(name, manifest, n_seeds, summary, len(missing))}\n\n{markdown_table(merged, body)}"
    if len(missing):
        text += "\n## Runs not in the means\n\n" + markdown_table(
            ["Run", "Dataset", "Pair", "Method", "Seed", "Status", "Reason"],
            [[r.run_id, _text(r.dataset), r.pair, r.label, _text(r.seed), r.status, r.error] for r in missing.itertuples()])
    return text


def _latex(summary: pd.DataFrame, missing: pd.DataFrame, name: str, manifest: dict[str, Any], n_seeds: int,
           transpose: bool) -> str:
    header, body, rules = _grid(summary, n_seeds, transpose, tex=True)
    leading = 2 if transpose else 1
    notes = [latex_escape(f"Not in the means: {r.label}, {_text(r.dataset)}, {r.pair}, seed {_text(r.seed)}, "
                          f"run {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else ""))
             for r in missing.itertuples()]
    return latex_table(header, body, latex_escape(_caption(name, manifest, n_seeds, summary, len(missing))),
                       f"tab:{name}", "l" * leading + "c" * (len(header[0]) - leading), rules, notes)


def _text(value: Any) -> str:
    """A value for a table cell: '?' when unknown, whole numbers without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
