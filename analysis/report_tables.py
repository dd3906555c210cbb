"""The report's tables and captions: ``table.md``, ``table.tex``, ``paired.tex``,
``published.tex`` and ``protocol.tex`` (``analysis.report`` says what each holds).

Each table is one ``tables.Grid`` built by ``grid`` from the summary's rows and a cell
formatter of ``analysis.cells``, once per language: the grid and the cells take a
``tables.Markup`` and never ask which language they write. The captions are plain text,
escaped by the LaTeX writer and read as they are by Markdown and ``report.html``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .cells import accuracy_cell, paired_cell, published_cell
from .protocol import card_latex, card_markdown
from .runs import SELECTION_TEXT
from .stats import MIN_PAIRS, NOT_COMPUTABLE, SIGNIFICANCE, TEST_NAME
from .style import display_name
from .tables import LATEX, MARKDOWN, Grid, Markup, latex_table, markdown_table

if TYPE_CHECKING:
    from .report import Report

PUBLISHED_CAPTION = ("Ours against the published numbers, each on the papers' own rule: the best test epoch of "
                     "each run (selected on test, so optimistic; the main table's number is not), mean ± std over "
                     "seeds, then the published number and our difference to it. ‡: the published number lies "
                     "outside the range of our seeds.")


def write_tables(report: Report, out: Path, transpose: bool = False) -> list[Path]:
    """``table.md``, ``table.tex``, ``paired.tex``, ``protocol.tex`` and, where the suite
    quotes published numbers, ``published.tex`` in ``out``; returns them."""
    texts = {"table.md": markdown(report, transpose), "table.tex": latex(report, transpose),
             "paired.tex": latex_paired(report), "protocol.tex": card_latex(report.card, report.name)}
    if report.summary["paper"].notna().any():
        texts["published.tex"] = latex_published(report.summary, report.name)
    for name, text in texts.items():
        (out / name).write_text(text)
    return [out / name for name in texts]


# --- captions ----------------------------------------------------------------------------------

def caption(report: Report) -> str:
    """The main table's caption, as plain text."""
    summary, rule, n_seeds = report.summary, report.manifest.selection, report.n_seeds
    text = (f"Test top-1 accuracy (%) on suite {report.name}: mean ± std over {n_seeds} seeds, each run taken at "
            f"{SELECTION_TEXT[rule]} (selection rule: {rule}). The teacher row is the teacher the students learned "
            f"from. For each dataset and pair the best method is bold and the second underlined. "
            f"[n=k]: only k of {n_seeds} runs finished.")
    text += " " + _significance_text(report)
    notes = summary.loc[summary["augment_note"] != "", "augment_note"]
    usual = summary.loc[(summary["role"] != "teacher") & (summary["augment_note"] == "") & (summary["augment"] != ""),
                        "augment"]
    if len(usual):
        text += (f" Training augmentation: {usual.iloc[0]}"
                 + (", except where a cell says [aug: …]." if len(notes) else " for every run."))
    if report.manifest.controls:
        text += (" Controls (not ranked), below the methods: "
                 + "; ".join(f"{display_name(label)}: {what}" for label, what in report.manifest.controls.items())
                 + ".")
    if summary["paper"].notna().any():
        text += (" The published numbers, selected on test as the papers did, are set against ours on that rule "
                 "in their own table, not here.")
    if len(report.missing):
        text += f" {len(report.missing)} run(s) failed or did not finish and are not in the means (listed below)."
    return text


def _significance_text(report: Report) -> str:
    if not report.summary["paired_n"].notna().any():
        return f"No paired comparison: the reference {report.reference_name} has no finished run in this suite."
    text = f"†: differs from {report.reference_name} at p < {SIGNIFICANCE} ({TEST_NAME} over seeds)."
    if not (report.summary["paired_n"].dropna() >= MIN_PAIRS).any():
        text += f" No cell has {MIN_PAIRS} paired seeds, so none is tested."
    return text


def paired_caption(report: Report) -> str:
    """The caption of the paired differences, as plain text."""
    return (f"Paired difference to {report.reference_name} in test top-1 (percentage points, selection rule: "
            f"{report.manifest.selection}): mean over the seeds where both finished (runs of one seed saw the same "
            f"batches), its 95% confidence interval and p from the {TEST_NAME} (t distribution, n − 1 degrees of "
            f"freedom); {NOT_COMPUTABLE} with fewer than {MIN_PAIRS} paired seeds.")


# --- grids ---------------------------------------------------------------------------------------

def grid(summary: pd.DataFrame, markup: Markup, cell: Callable[[pd.Series | None], str],
         transpose: bool = False) -> Grid:
    """``summary``'s cells as ``cell(row)`` writes them (``None`` where a label has no row
    in a column): methods as rows, one column per dataset and pair (``transpose`` swaps the
    two), a rule under the teacher, and the controls as a block under the methods."""
    escape = markup.escape
    cols = list(dict.fromkeys(zip(summary["dataset"], summary["pair"])))
    methods = list(dict.fromkeys(summary["label"]))
    control_of = dict(zip(summary["label"], summary["control"]))
    cells = {(r["dataset"], r["pair"], r["label"]): r for _, r in summary.iterrows()}

    def at(column: tuple[str, str], label: str) -> str:
        return cell(cells.get((*column, label)))

    if transpose:
        names = [escape(display_name(m)) + (escape(" (control)") if control_of[m] else "") for m in methods]
        return Grid([["Dataset", "Pair", *names]], [[escape(d), escape(p), *(at((d, p), m) for m in methods)]
                                                    for d, p in cols])
    header = [["Method", *(escape(d) for d, _ in cols)], ["", *(escape(p) for _, p in cols)]]
    body = [[_row_name(m, control_of[m], markup), *(at(c, m) for c in cols)] for m in methods]
    first_control = next((i for i, m in enumerate(methods) if control_of[m]), None)
    rules = [0] if methods[:1] == ["teacher"] else []
    if first_control is not None and first_control > 0:
        rules.append(first_control - 1)
    return Grid(header, body, rules, None if first_control is None else (first_control, markup.italic("Controls")))


def _row_name(label: str, control: str, markup: Markup) -> str:
    """A row's label: the method's display name, and for a control what it controls."""
    name = markup.escape(display_name(label))
    return name + markup.small(f"({markup.escape(control)})") if control else name


def _accuracy(summary: pd.DataFrame, markup: Markup, n_seeds: int, transpose: bool) -> Grid:
    return grid(summary, markup, lambda row: accuracy_cell(row).written(markup, n_seeds), transpose)


def _paired(summary: pd.DataFrame, markup: Markup) -> Grid:
    return grid(summary[summary["paired_n"].notna()], markup, lambda row: paired_cell(row).written(markup))


def _published(summary: pd.DataFrame, markup: Markup) -> Grid:
    """The published comparison: the controls after a rule, without a heading of their own."""
    return replace(grid(summary[summary["paper"].notna()], markup, lambda row: published_cell(row).written(markup)),
                   block=None)


# --- Markdown and LaTeX --------------------------------------------------------------------------

def markdown(report: Report, transpose: bool = False) -> str:
    """``table.md``: the table, the paired differences, the runs left out, the published
    comparison and the protocol card."""
    summary = report.summary
    text = (f"# {report.name}\n\n{caption(report)}\n\n"
            f"{markdown_table(_accuracy(summary, MARKDOWN, report.n_seeds, transpose))}")
    if summary.loc[summary["role"] != "teacher", "paired_n"].notna().any():
        text += (f"\n## Paired differences to {report.reference_name}\n\n{paired_caption(report)}\n\n"
                 + markdown_table(_paired(summary[summary["role"] != "teacher"], MARKDOWN)))
    if len(report.missing):
        text += "\n## Runs not in the means\n\n" + markdown_table(Grid(
            [["Run", "Dataset", "Pair", "Method", "Seed", "Status", "Reason"]],
            [[r.run_id, _text(r.dataset), r.pair, r.label, _text(r.seed), r.status, r.error]
             for r in report.missing.itertuples()]))
    if summary["paper"].notna().any():
        text += (f"\n## Against the published numbers\n\n{PUBLISHED_CAPTION}\n\n"
                 + markdown_table(_published(summary, MARKDOWN)))
    return text + card_markdown(report.card)


def latex(report: Report, transpose: bool = False) -> str:
    """``table.tex``: the main table, the runs left out of the means listed under it."""
    table = _accuracy(report.summary, LATEX, report.n_seeds, transpose)
    leading = 2 if transpose else 1
    notes = [LATEX.escape(f"Not in the means: {r.label}, {_text(r.dataset)}, {r.pair}, seed {_text(r.seed)}, "
                          f"run {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else ""))
             for r in report.missing.itertuples()]
    return latex_table(table, LATEX.escape(caption(report)), f"tab:{report.name}",
                       "l" * leading + "c" * (len(table.header[0]) - leading), notes)


def latex_paired(report: Report) -> str:
    """``paired.tex``: the paired differences, or a comment where none was computed."""
    if report.summary["paired_n"].isna().all():
        return (f"% No paired comparison in suite {report.name}: the reference {report.reference} has no "
                "finished run.\n")
    table = _paired(report.summary, LATEX)
    return latex_table(table, LATEX.escape(paired_caption(report)), f"tab:{report.name}-paired",
                       "l" + "c" * (len(table.header[0]) - 1))


def latex_published(summary: pd.DataFrame, name: str) -> str:
    """``published.tex``: ours on the papers' rule against their numbers."""
    table = _published(summary, LATEX)
    return latex_table(table, LATEX.escape(PUBLISHED_CAPTION), f"tab:{name}-published",
                       "l" + "c" * (len(table.header[0]) - 1))


def _text(value: Any) -> str:
    """A value for a table cell: '?' when unknown, whole numbers without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
