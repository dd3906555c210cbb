"""``report.html``: a suite's report as one page to open in a browser or send to a co-author.

The page is rendered by Jinja2 (``templates/report.html.j2``) from the same ``Report`` as
``table.md`` and ``table.tex`` (the summary, the runs, the runs left out), its cells read
by ``analysis.cells`` as theirs are, and holds everything itself: the figures are
embedded as base64 PNG, the curves of each run as inline SVG, the table sorting as a few
lines of inline JavaScript; it loads nothing from the network and needs no server.
Sections:

- the main table (methods, then the controls block, each labelled by what it controls),
  sortable by any column (the controls sort within their block), with the same marks as
  the Markdown table: best bold, second underlined, † for p < 0.05 against the reference;
- the paired differences to the reference (mean, 95% CI, p, n per cell);
- the runs left out of the means, with their reasons;
- the figures;
- every run, one row each (sortable), that opens to its spec, its per-epoch curves (val
  and test top-1, each loss term) with the numbers, and, for a failed run, the error.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pandas as pd

from kdbench import store
from kdbench.store import FAILED, runs_dir

from . import fidelity, ranking, report_tables, style
from .cells import Published, accuracy_cell, paired_cell, published_cell
from .ranking import Ranking
from .style import color, display_name
from .tables import MARKDOWN

if TYPE_CHECKING:
    from .report import Report

TEMPLATES = Path(__file__).parent / "templates"
SVG_WIDTH, SVG_HEIGHT, SVG_MARGIN = 370, 150, 40
# CSS pixels per inch of a figure: 1.5 × the CSS inch, so the figures' 8-pt text reads on a screen
SCREEN_DPI = 144


def write_html(path: Path, report: Report, figures: list[Path]) -> Path:
    """Render ``report.html`` at ``path``; ``figures`` are the PNG files to embed (the
    critical-difference diagram goes with the ranking section)."""
    diagram = next((f for f in figures if f.stem == "critical_difference"), None)
    figures = [f for f in figures if f != diagram]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    summary = report.summary
    columns = list(dict.fromkeys(zip(summary["dataset"], summary["pair"])))
    page = environment.get_template("report.html.j2").render(
        suite=report.name,
        description=report.manifest.description or "",
        reference=report.reference_name,
        n_seeds=report.n_seeds,
        caption=report_tables.caption(report),
        paired_caption=report_tables.paired_caption(report),
        columns=[{"dataset": d, "pair": p} for d, p in columns],
        blocks=_blocks(summary, columns, accuracy_cell),
        paired_blocks=_blocks(summary[summary["paired_n"].notna()], columns, paired_cell),
        missing=[{"run_id": r.run_id, "dataset": r.dataset, "pair": r.pair, "label": r.label, "seed": _seed(r.seed),
                  "status": r.status, "error": r.error} for r in report.missing.itertuples()],
        figures=[_figure(f) for f in figures],
        fidelity_caption=fidelity.caption(summary, report.reference_name, report.confusable_k),
        fidelity=_fidelity(summary, columns),
        ranking=_ranking(report.ranked, report.reference_name, diagram),
        card=[{"section": section, "item": item, "value": value} for section, item, value in report.card],
        published_caption=report_tables.PUBLISHED_CAPTION,
        published=_blocks(summary[summary["paper"].notna()], columns, lambda row: _published(published_cell(row))),
        runs=[_run(report.suite_dir, run) for run in report.runs[report.runs["run_id"] != "checkpoint"].itertuples()],
    )
    path.write_text(page)
    return path


def _figure(png: Path) -> dict[str, Any]:
    """A PNG to embed, with its width on the page (``SCREEN_DPI`` per inch of the figure)."""
    data = png.read_bytes()
    width = int.from_bytes(data[16:20], "big")  # the IHDR chunk's width, right after the 8-byte signature
    return {"name": png.stem, "data": base64.b64encode(data).decode(),
            "width": round(width * SCREEN_DPI / style.RC["savefig.dpi"])}


def _blocks(summary: pd.DataFrame, columns: list[tuple[str, str]], cell) -> list[dict[str, Any]]:
    """The methods, then the controls: each a list of rows of cells for the template."""
    cells = {(r["dataset"], r["pair"], r["label"]): r for _, r in summary.iterrows()}
    labels = list(dict.fromkeys(summary["label"]))
    control_of = dict(zip(summary["label"], summary["control"]))
    blocks = []
    for is_control in (False, True):
        rows = [{"label": label, "name": display_name(label), "control": control_of[label], "color": color(label),
                 "cells": [cell(cells.get((*column, label))) for column in columns]}
                for label in labels if bool(control_of[label]) == is_control]
        if rows:
            blocks.append({"controls": is_control, "rows": rows})
    return blocks


def _fidelity(summary: pd.DataFrame, columns: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One table per fidelity measure: its heading and its blocks of rows, each cell the
    mean ± std with the paired difference to the reference under it."""
    def cell(metric: fidelity.Metric, row: pd.Series | None) -> dict[str, Any]:
        text = fidelity.value_text(metric, row)
        paired = fidelity.paired_text(metric, row)
        return {"text": text, "sort": None if text == "–" else row[f"{metric.key}_mean"],
                "paired": "" if paired == "–" else paired}

    return [{"key": m.key, "heading": m.heading, "higher_is_better": m.higher_is_better,
             "blocks": _blocks(summary, columns, lambda row, m=m: cell(m, row))} for m in fidelity.METRICS]


def _ranking(ranked: Ranking, reference: str, diagram: Path | None) -> dict[str, Any]:
    """The ranking section: caption, table rows and diagram."""
    header, body = ranking.rows(ranked, reference) if ranked.exists else ([], [])
    return {"caption": ranking.caption(ranked, reference), "header": header, "body": body,
            "figure": _figure(diagram) if diagram is not None else None}


def _published(cell: Published) -> dict[str, Any]:
    """Ours on the papers' rule, with the published number and our difference under it."""
    if cell.sort is None:
        return {"text": "–", "sort": None, "paired": ""}
    return {"text": cell.ours + (MARKDOWN.spread(cell.std) if cell.std is not None else ""), "sort": cell.sort,
            "paired": f"published {cell.paper} ({MARKDOWN.signed(cell.sort)})" + (" ‡" if cell.outside else "")}


def _run(suite_dir: Path, run: Any) -> dict[str, Any]:
    """One run for the template: its row, spec, per-epoch metrics and curves."""
    run_dir = runs_dir(suite_dir) / run.run_id
    spec, metrics = None, []
    for name in (store.RECORD, FAILED, store.SPEC):
        if (run_dir / name).exists():
            try:
                saved = store.read_json(run_dir / name)
            except ValueError:  # corrupt: store.load_results has warned about it
                continue
            spec = saved.get("spec", saved if name == store.SPEC else None)
            metrics = saved.get("metrics") or store.read_metrics(run_dir)
            break
    terms = sorted({k for row in metrics for k in row if k.startswith("loss_")})
    return {
        "run_id": run.run_id, "dataset": run.dataset, "pair": run.pair, "label": run.label,
        "name": display_name(run.label), "seed": _seed(run.seed), "status": run.status,
        "best_val": _number(run.value_best_val), "last": _number(run.value_last), "epochs": len(metrics),
        "error": run.error if isinstance(run.error, str) else "",
        "spec": json.dumps(spec, indent=2) if spec is not None else "",
        "columns": ["epoch", "lr", *terms, "val_top1", "test_top1", "images_per_s"],
        "metrics": metrics,
        "accuracy_plot": _svg_lines(metrics, ["val_top1", "test_top1"], "top-1 (%)"),
        "loss_plot": _svg_lines(metrics, terms, "loss"),
    }


def _seed(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _svg_lines(metrics: list[dict[str, Any]], keys: list[str], ylabel: str) -> dict[str, Any] | None:
    """Polylines of ``keys`` over epochs scaled into an SVG box, or None without two finite points."""
    points = {k: [(m["epoch"], m[k]) for m in metrics if isinstance(m.get(k), (int, float)) and math.isfinite(m[k])]
              for k in keys}
    values = [v for series in points.values() for _, v in series]
    epochs = [e for series in points.values() for e, _ in series]
    if len(values) < 2:
        return None
    (x0, x1), (y0, y1) = _span(epochs), _span(values)
    inner_w, inner_h = SVG_WIDTH - 2 * SVG_MARGIN, SVG_HEIGHT - 2 * SVG_MARGIN

    def xy(epoch: float, value: float) -> str:
        return (f"{SVG_MARGIN + (epoch - x0) / (x1 - x0) * inner_w:.1f},"
                f"{SVG_HEIGHT - SVG_MARGIN - (value - y0) / (y1 - y0) * inner_h:.1f}")

    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
    return {"width": SVG_WIDTH, "height": SVG_HEIGHT, "margin": SVG_MARGIN, "ylabel": ylabel,
            "x_range": (f"{x0:g}", f"{x1:g}"), "y_range": (f"{y0:.3g}", f"{y1:.3g}"),
            "lines": [{"name": k.removeprefix("loss_"), "color": palette[i % len(palette)],
                       "points": " ".join(xy(e, v) for e, v in series)}
                      for i, (k, series) in enumerate(points.items()) if series]}


def _span(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    return (low, high) if high > low else (low - 0.5, high + 0.5)
