"""The outputs of an ablation (``kdbench ablate``, run by ``kdbench.runner.tuning``), read from the
study's storage and the runs' records; nothing here trains.

In ``<out>/<suite>/ablation/``:

- ``trials.csv``, ``trials.md``, ``trials.tex``: one row per trial: number, state, val
  top-1, epochs trained (pruned trials stop early), the sampled hyperparameters, run id and
  the reason of a failure; the best trial in bold. The Markdown and the LaTeX caption also
  give the best configuration and its test accuracy retrained over the suite's seeds.
- ``best.json``: the best trial's number, hyperparameters and val top-1, and its test top-1
  (suite selection rule) for each of the suite's seeds with mean and std, each seed's run id,
  and the seeds whose run failed (the reason from its ``failed.json``).
- ``figures/``: ``history`` (optimisation history), ``importances`` (fANOVA parameter
  importances), ``slices`` (val top-1 against each hyperparameter), drawn by
  ``optuna.visualization.matplotlib`` and restyled, and, when the block names
  ``heatmap: [rows, columns]``, ``<rows>_<columns>`` (mean val top-1 of the complete trials
  per pair of values, with the number of trials), each as PDF and PNG. A figure that cannot
  be drawn yet (importances need two complete trials) is left out and the reason is printed
  and written to ``trials.md``.
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd

from kdbench.suite.ablation import Ablation
from kdbench.store import RUNS, RunFolder, read_run_file

from . import style
from .runs import SELECTION_COLUMN
from .tables import LATEX, MARKDOWN, Grid, Markup, latex_table, markdown_table


def write_ablation(ablation: Ablation, out: str | Path = "results", storage: str | None = None,
                   printer: Callable[[str], None] = print) -> list[Path]:
    """Tables, ``best.json`` and figures of the ablation's study (in ``storage``, else the
    block's, else its SQLite file under ``out``); returns the files written."""
    study = optuna.load_study(study_name=ablation.study_name, storage=ablation.storage_url(out, storage))
    folder = ablation.folder(out)
    names = [p.name for p in ablation.space]
    frame = trials_frame(study, names)
    complete = frame[frame["state"] == "COMPLETE"]
    best = best_configuration(ablation, study, ablation.directory(out) / RUNS) if len(complete) else None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    notes: list[str] = []
    figures = folder / "figures"
    drawn = [
        *_optuna_figure("history", optuna.visualization.matplotlib.plot_optimization_history, study,
                        figures / "history", style.SINGLE, 0.75, notes),
        *_optuna_figure("importances", optuna.visualization.matplotlib.plot_param_importances, study,
                        figures / "importances", style.SINGLE, 0.75, notes),
        *_optuna_figure("slices", optuna.visualization.matplotlib.plot_slice, study,
                        figures / "slices", style.DOUBLE, 0.3, notes),
        *(_heatmap(complete, ablation.config.heatmap, figures, notes) if ablation.config.heatmap else []),
    ]
    summary = _best_text(ablation, best)
    for line in [summary, *(f"figure left out: {note}" for note in notes)]:
        printer(line)
    return [folder / "best.json", *_trial_tables(frame, names, summary, notes, ablation.study_name, folder), *drawn]


def trials_frame(study: optuna.Study, names: list[str]) -> pd.DataFrame:
    """One row per trial: trial, state, val_top1 (complete trials only: Optuna keeps a pruned trial's last
    reported value, which is no score), epochs, the hyperparameters ``names``, run_id, error."""
    complete = optuna.trial.TrialState.COMPLETE
    rows = [{"trial": t.number, "state": t.state.name, "val_top1": t.value if t.state == complete else None,
             "epochs": max(t.intermediate_values, default=None), **t.params,
             "run_id": t.user_attrs.get("run_id"), "error": t.user_attrs.get("error")} for t in study.trials]
    return pd.DataFrame(rows, columns=["trial", "state", "val_top1", "epochs", *names, "run_id", "error"])


def best_configuration(ablation: Ablation, study: optuna.Study, runs: Path) -> dict[str, Any]:
    """The best trial and the test accuracy of its configuration on each of the suite's
    seeds (from the runs' records; a seed whose run failed, with its reason)."""
    trial = study.best_trial
    column = SELECTION_COLUMN[ablation.suite.file.selection]
    tests: dict[int, float] = {}
    failed: dict[int, str] = {}
    run_ids: dict[int, str] = {}
    for seed in ablation.suite.file.seeds:
        run_id = run_ids[seed] = ablation.spec(trial.params, seed).run_id
        run = RunFolder.of(runs, run_id)
        if run.record.exists():
            tests[seed] = getattr(read_run_file(run.record).summary, column)
        else:
            failed[seed] = read_run_file(run.failure).error if run.failure.exists() else "no record: not trained yet"
    values = list(tests.values())
    return {
        "study": ablation.study_name, "trial": trial.number, "params": trial.params, "val_top1": trial.value,
        "selection": ablation.suite.file.selection,
        "test_top1": {"mean": statistics.mean(values) if values else None,
                      "std": statistics.stdev(values) if len(values) > 1 else None,
                      "n": len(values), "per_seed": tests, "failed": failed},
        "run_ids": run_ids,
    }


def _trial_tables(frame: pd.DataFrame, names: list[str], summary: str, notes: list[str], study: str,
                  folder: Path) -> list[Path]:
    """``trials.csv``, ``trials.md`` and ``trials.tex``; the best complete trial's score in bold."""
    header = ["Trial", "State", "Val top-1", "Epochs", *names, "Run", "Error"]
    body = [[str(t.trial), t.state, _number(t.val_top1), _number(t.epochs), *(_number(getattr(t, n)) for n in names),
             _number(t.run_id), _number(t.error).split("\n")[0][:100]] for t in frame.itertuples()]
    best = frame["val_top1"].idxmax() if frame["val_top1"].notna().any() else None
    paths = [folder / "trials.csv", folder / "trials.md", folder / "trials.tex"]
    frame.to_csv(paths[0], index=False)

    def grid(markup: Markup) -> Grid:
        return Grid([[markup.escape(h) for h in header]],
                    [[markup.bold(markup.escape(c)) if i == best and k == 2 else markup.escape(c)
                      for k, c in enumerate(row)] for i, row in enumerate(body)])

    paths[1].write_text(f"# Ablation {study}\n\n{summary}\n\n" + markdown_table(grid(MARKDOWN))
                        + "".join(f"\nFigure left out: {note}\n" for note in notes))
    paths[2].write_text(latex_table(grid(LATEX), LATEX.escape(summary), f"tab:{study}",
                                    "rlrr" + "c" * len(names) + "ll"))
    return paths


def _best_text(ablation: Ablation, best: dict[str, Any] | None) -> str:
    if best is None:
        return f"Ablation of {ablation.config.method}: no trial has completed yet."
    test = best["test_top1"]
    spread = f" ± {test['std']:.2f}" if test["std"] is not None else ""
    accuracy = f"{test['mean']:.2f}{spread}" if test["mean"] is not None else "–"
    params = ", ".join(f"{k}={_number(v)}" for k, v in best["params"].items())
    failed = f" ({len(test['failed'])} seed(s) failed: {', '.join(map(str, test['failed']))})" if test["failed"] else ""
    return (f"Ablation of {ablation.config.method} on {ablation.template.spec.dataset.name}, {ablation.template.pair}, "
            f"scored by validation top-1 (selection rule: {best['selection']}). Best: trial {best['trial']} ({params}), "
            f"val top-1 {best['val_top1']:.2f}; retrained with seeds {', '.join(map(str, ablation.suite.file.seeds))}: "
            f"test top-1 {accuracy} over {test['n']} run(s){failed}.")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def _optuna_figure(name: str, plot: Callable[..., Any], study: optuna.Study, stem: Path, width: float, aspect: float,
                   notes: list[str]) -> list[Path]:
    """An ``optuna.visualization.matplotlib`` figure, restyled; a note instead when it cannot be drawn."""
    style.apply()
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna switches to ggplot: keep that local
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. a slice of a parameter with a single value
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{name}: {exc}")
            return []
    fig = np.ravel(axes)[0].figure
    fig.set_size_inches(width, width * aspect)
    style.restyle(fig)
    return style.save(fig, stem)


def _heatmap(complete: pd.DataFrame, axes_names: tuple[str, str], figures: Path, notes: list[str]) -> list[Path]:
    """Mean val top-1 of the complete trials per value of ``rows`` × ``columns`` (the block's
    ``heatmap``), annotated with the count."""
    import seaborn as sns

    rows, cols = axes_names
    name = f"{rows}_{cols}"
    if complete.empty:
        notes.append(f"{name}: needs complete trials that vary {rows} and {cols}")
        return []
    stats = complete.groupby([rows, cols])["val_top1"].agg(["mean", "count"])
    mean, count = stats["mean"].unstack(), stats["count"].unstack()
    labels = mean.map(lambda v: "" if np.isnan(v) else f"{v:.1f}") + count.map(lambda n: "" if np.isnan(n) else f"\nn={n:.0f}")
    fig, axes = style.figure(style.SINGLE, aspect=0.8)
    sns.heatmap(mean, annot=labels, fmt="", cmap="viridis", ax=axes[0, 0], cbar_kws={"label": "mean val top-1 (%)"},
                linewidths=0.5, annot_kws={"fontsize": 6})
    axes[0, 0].set_xlabel(cols)
    axes[0, 0].set_ylabel(rows)
    axes[0, 0].grid(False)
    return style.save(fig, figures / name)
