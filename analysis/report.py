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
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.store import Manifest, load_manifest

from . import curves, fidelity, ranking
from .protocol import card_latex, card_markdown, protocol_card
from .runs import (
    SELECTION_COLUMN,
    SELECTION_TEXT,
    columns,
    labels,
    paper_key,
    suite_runs,
)
from .stats import MIN_PAIRS, NOT_COMPUTABLE, SIGNIFICANCE, TEST_NAME, paired_difference
from .style import display_name
from .tables import latex_escape, latex_table, markdown_table

DEFAULT_REFERENCE = "kd"
RULES = tuple(SELECTION_COLUMN)  # best_val, last, best_test
DAGGER = {"tex": "$^\\dagger$", "md": "†"}
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


def write_report(suite_dir: str | Path, out_dir: str | Path | None = None, transpose: bool = False,
                 confusable_k: int = fidelity.DEFAULT_K) -> list[Path]:
    """Write the tables and figures of a suite's results folder; returns the files written.

    See the module docstring for what each file contains; ``confusable_k``: how many of
    each class's most confused classes make its confusable pairs (``analysis.fidelity``).
    """
    suite_dir = Path(suite_dir)
    every = suite_runs(suite_dir)
    runs, manifest = run_table(suite_dir, every)
    card = protocol_card(every, manifest)
    runs = pd.concat([runs, fidelity.fidelity_columns(suite_dir, runs, confusable_k)], axis=1)
    out = Path(out_dir) if out_dir is not None else suite_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    reference = reference_label(manifest)
    summary = fidelity.summarise(runs, summarise(runs, manifest), reference, confusable_k)
    ranked = ranking.rank_methods(summary, runs, reference)
    name = manifest.suite or suite_dir.name
    n_seeds = seed_count(runs)
    missing = left_out(runs)

    written = [out / "summary.csv", out / "runs.csv", out / "table.md", out / "table.tex", out / "paired.tex",
               out / "protocol.tex"]
    summary.to_csv(written[0], index=False)
    runs.to_csv(written[1], index=False)
    written[2].write_text(_markdown(summary, missing, name, manifest, n_seeds, transpose)
                          + _published_markdown(summary) + card_markdown(card))
    written[3].write_text(_latex(summary, missing, name, manifest, n_seeds, transpose))
    written[4].write_text(_latex_paired(summary, name, manifest))
    written[5].write_text(card_latex(card, name))
    if summary["paper"].notna().any():
        written.append(out / "published.tex")
        written[-1].write_text(_latex_published(summary, name))
    written += fidelity.write_tables(summary, out, name, display_name(reference), confusable_k)
    written += ranking.write_ranking(ranked, out, name, display_name(reference))
    figures = ranking.plot_critical_difference(ranked, out / "figures" / "critical_difference")
    figures += fidelity.plot_fidelity(summary, out / "figures")
    figures += curves.plot_training_curves(suite_dir, runs, out / "figures")
    figures += curves.plot_teacher_gap(summary, out / "figures" / "teacher_gap")
    if (runs["status"] == "finished").any():  # runs keep their test logits: the spectra come with the report
        from .spectra import write_spectra

        figures += write_spectra(suite_dir, out)
    from .html import write_html

    written += figures
    written.append(write_html(out / "report.html", suite_dir, runs, summary, missing, manifest, n_seeds,
                              caption(name, manifest, n_seeds, summary, len(missing)), paired_caption(manifest),
                              [f for f in figures if f.suffix == ".png"], ranked=ranked, card=card,
                              published_caption=PUBLISHED_CAPTION,
                              fidelity_caption=fidelity.caption(summary, display_name(reference), confusable_k)))
    return written


def caption(name: str, manifest: Manifest, n_seeds: int, summary: pd.DataFrame, left: int) -> str:
    """The main table's caption, as plain text."""
    rule = manifest.selection
    text = (f"Test top-1 accuracy (%) on suite {name}: mean ± std over {n_seeds} seeds, each run taken at "
            f"{SELECTION_TEXT[rule]} (selection rule: {rule}). The teacher row is the teacher the students learned "
            f"from. For each dataset and pair the best method is bold and the second underlined. "
            f"[n=k]: only k of {n_seeds} runs finished.")
    text += " " + _significance_text(manifest, summary)
    notes = summary.loc[summary["augment_note"] != "", "augment_note"]
    usual = summary.loc[(summary["role"] != "teacher") & (summary["augment_note"] == "") & (summary["augment"] != ""),
                        "augment"]
    if len(usual):
        text += (f" Training augmentation: {usual.iloc[0]}"
                 + (", except where a cell says [aug: …]." if len(notes) else " for every run."))
    controlled = controls(manifest)
    if controlled:
        text += (" Controls (not ranked), below the methods: "
                 + "; ".join(f"{display_name(label)}: {what}" for label, what in controlled.items()) + ".")
    if summary["paper"].notna().any():
        text += (" The published numbers, selected on test as the papers did, are set against ours on that rule "
                 "in their own table, not here.")
    if left:
        text += f" {left} run(s) failed or did not finish and are not in the means (listed below)."
    return text


def _significance_text(manifest: Manifest, summary: pd.DataFrame) -> str:
    reference = display_name(reference_label(manifest))
    if not summary["paired_n"].notna().any():
        return f"No paired comparison: the reference {reference} has no finished run in this suite."
    text = f"†: differs from {reference} at p < {SIGNIFICANCE} ({TEST_NAME} over seeds)."
    if not (summary["paired_n"].dropna() >= MIN_PAIRS).any():
        text += f" No cell has {MIN_PAIRS} paired seeds, so none is tested."
    return text


def paired_caption(manifest: Manifest) -> str:
    """The caption of the paired differences, as plain text."""
    reference = display_name(reference_label(manifest))
    rule = manifest.selection
    return (f"Paired difference to {reference} in test top-1 (percentage points, selection rule: {rule}): mean "
            f"over the seeds where both finished (runs of one seed saw the same batches), its 95% confidence "
            f"interval and p from the {TEST_NAME} (t distribution, n − 1 degrees of freedom); "
            f"{NOT_COMPUTABLE} with fewer than {MIN_PAIRS} paired seeds.")


def paired_text(row: pd.Series | None, tex: bool = False) -> str:
    """A paired-difference cell: ``+1.23 [+0.45, +2.01], p=0.012 (n=3)``."""
    if row is None or pd.isna(row["paired_n"]):
        return "--" if tex else "–"
    if pd.isna(row["diff_mean"]):
        return NOT_COMPUTABLE.replace("<", "$<$") if tex else NOT_COMPUTABLE
    p_value = row["p_value"]
    p_text = ("p$<$0.001" if tex else "p<0.001") if p_value < 0.001 else f"p={p_value:.3f}"
    low, mean, high = (_signed(row[k], tex) for k in ("diff_ci_low", "diff_mean", "diff_ci_high"))
    return f"{mean} [{low}, {high}], {p_text} (n={row['paired_n']})"


def _signed(value: float, tex: bool) -> str:
    text = f"{value:+.2f}"
    return text.replace("-", "$-$").replace("+", "$+$") if tex else text


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
        if _is_true(row["significant"]):
            text += DAGGER["tex" if tex else "md"]
    extras = [row["augment_note"]] if row["augment_note"] else []
    if row["role"] != "teacher" and row["n"] < n_seeds:
        extras.append(f"[n={row['n']}]")
    if extras:
        text += f" {{\\scriptsize {' '.join(extras)}}}" if tex else " " + " ".join(extras)
    return text


def _is_true(value: Any) -> bool:
    return not pd.isna(value) and bool(value)


def _row_name(label: str, control: str, tex: bool) -> str:
    """A row's label: the method's display name, and for a control what it controls."""
    if not control:
        return latex_escape(display_name(label)) if tex else display_name(label)
    if tex:
        return f"{latex_escape(display_name(label))} {{\\scriptsize ({latex_escape(control)})}}"
    return f"{display_name(label)} ({control})"


def _grid(summary: pd.DataFrame, n_seeds: int, transpose: bool, tex: bool,
          cell_text=None) -> tuple[list[list[str]], list[list[str]], list[int], int | None]:
    """Header rows, body rows, the body rows followed by a rule, and the index of the first
    control row (None without controls), as cell text. ``cell_text(row)`` formats a cell
    (default: the accuracy cell)."""
    escape = latex_escape if tex else str
    cell_text = cell_text or (lambda row: _cell(row, n_seeds, tex))
    cols = list(dict.fromkeys(zip(summary["dataset"], summary["pair"])))
    methods = list(dict.fromkeys(summary["label"]))
    control_of = dict(zip(summary["label"], summary["control"]))
    cells = {(r["dataset"], r["pair"], r["label"]): r for _, r in summary.iterrows()}
    first_control = next((i for i, m in enumerate(methods) if control_of[m]), None)

    def cell(column: tuple[str, str], label: str) -> str:
        return cell_text(cells.get((*column, label)))

    if transpose:
        names = [escape(display_name(m)) + (escape(" (control)") if control_of[m] else "") for m in methods]
        header = [["Dataset", "Pair", *names]]
        body = [[escape(d), escape(p), *(cell((d, p), m) for m in methods)] for d, p in cols]
        return header, body, [], None
    header = [["Method", *(escape(d) for d, _ in cols)], ["", *(escape(p) for _, p in cols)]]
    body = [[_row_name(m, control_of[m], tex), *(cell(c, m) for c in cols)] for m in methods]
    rules = [0] if methods[:1] == ["teacher"] else []
    if first_control is not None and first_control > 0:
        rules.append(first_control - 1)
    return header, body, rules, first_control


def _markdown(summary: pd.DataFrame, missing: pd.DataFrame, name: str, manifest: Manifest, n_seeds: int,
              transpose: bool) -> str:
    header, body, _, first_control = _grid(summary, n_seeds, transpose, tex=False)
    merged = [" ".join(part for part in parts if part) for parts in zip(*header)]
    if first_control is not None:
        body.insert(first_control, ["*Controls*"] + [""] * (len(merged) - 1))
    text = (f"# {name}\n\n{caption(name, manifest, n_seeds, summary, len(missing))}\n\n"
            f"{markdown_table(merged, body)}")
    students = summary[summary["role"] != "teacher"]
    if students["paired_n"].notna().any():
        header, body, _, first_control = _grid(students[students["paired_n"].notna()], n_seeds, False, tex=False,
                                               cell_text=paired_text)
        if first_control is not None:
            body.insert(first_control, ["*Controls*"] + [""] * (len(body[0]) - 1))
        text += (f"\n## Paired differences to {display_name(reference_label(manifest))}\n\n{paired_caption(manifest)}\n\n"
                 + markdown_table([" ".join(part for part in parts if part) for parts in zip(*header)], body))
    if len(missing):
        text += "\n## Runs not in the means\n\n" + markdown_table(
            ["Run", "Dataset", "Pair", "Method", "Seed", "Status", "Reason"],
            [[r.run_id, _text(r.dataset), r.pair, r.label, _text(r.seed), r.status, r.error] for r in missing.itertuples()])
    return text


def _latex(summary: pd.DataFrame, missing: pd.DataFrame, name: str, manifest: Manifest, n_seeds: int,
           transpose: bool) -> str:
    header, body, rules, first_control = _grid(summary, n_seeds, transpose, tex=True)
    leading = 2 if transpose else 1
    if first_control is not None:
        body.insert(first_control, [f"\\multicolumn{{{len(header[0])}}}{{l}}{{\\textit{{Controls}}}}"])
        rules = [r + 1 if r >= first_control else r for r in rules]
    notes = [latex_escape(f"Not in the means: {r.label}, {_text(r.dataset)}, {r.pair}, seed {_text(r.seed)}, "
                          f"run {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else ""))
             for r in missing.itertuples()]
    return latex_table(header, body, latex_escape(caption(name, manifest, n_seeds, summary, len(missing))),
                       f"tab:{name}", "l" * leading + "c" * (len(header[0]) - leading), rules, notes)


def _latex_paired(summary: pd.DataFrame, name: str, manifest: Manifest) -> str:
    compared = summary[summary["paired_n"].notna()]
    if compared.empty:
        return f"% No paired comparison in suite {name}: the reference {reference_label(manifest)} has no finished run.\n"
    header, body, rules, first_control = _grid(compared, 0, False, tex=True, cell_text=lambda r: paired_text(r, tex=True))
    if first_control is not None:
        body.insert(first_control, [f"\\multicolumn{{{len(header[0])}}}{{l}}{{\\textit{{Controls}}}}"])
        rules = [r + 1 if r >= first_control else r for r in rules]
    return latex_table(header, body, latex_escape(paired_caption(manifest)), f"tab:{name}-paired",
                       "l" + "c" * (len(header[0]) - 1), rules)


PUBLISHED_CAPTION = ("Ours against the published numbers, each on the papers' own rule: the best test epoch of "
                     "each run (selected on test, so optimistic; the main table's number is not), mean ± std over "
                     "seeds, then the published number and our difference to it. ‡: the published number lies "
                     "outside the range of our seeds.")


def published_text(row: pd.Series | None, tex: bool = False) -> str:
    """A published-comparison cell: ``76.10 ± 0.21 vs 76.32 (−0.22)‡``; '–' without a number."""
    if row is None or pd.isna(row["paper"]) or pd.isna(row["mean_best_test"]):
        return "--" if tex else "–"
    spread = "" if pd.isna(row["std_best_test"]) else (f"{{\\scriptsize$\\pm${row['std_best_test']:.2f}}}" if tex
                                                       else f" ± {row['std_best_test']:.2f}")
    mark = ("$^\\ddagger$" if tex else "‡") if _is_true(row["paper_outside_spread"]) else ""
    return (f"{row['mean_best_test']:.2f}{spread} vs {row['paper']:.2f} "
            f"({_signed(row['delta_paper'], tex)}){mark}")


def _published_markdown(summary: pd.DataFrame) -> str:
    quoted = summary[summary["paper"].notna()]
    if quoted.empty:
        return ""
    header, body, _, _ = _grid(quoted, 0, False, tex=False, cell_text=published_text)
    return (f"\n## Against the published numbers\n\n{PUBLISHED_CAPTION}\n\n"
            + markdown_table([" ".join(part for part in parts if part) for parts in zip(*header)], body))


def _latex_published(summary: pd.DataFrame, name: str) -> str:
    header, body, rules, _ = _grid(summary[summary["paper"].notna()], 0, False, tex=True,
                                   cell_text=lambda r: published_text(r, tex=True))
    return latex_table(header, body, latex_escape(PUBLISHED_CAPTION), f"tab:{name}-published",
                       "l" + "c" * (len(header[0]) - 1), rules)


def _text(value: Any) -> str:
    """A value for a table cell: '?' when unknown, whole numbers without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
