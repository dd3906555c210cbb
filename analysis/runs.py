"""The runs of one suite folder, as the analysis tools read them.

``suite_runs`` is ``kdbench.store.load_results`` restricted to the jobs the suite's
manifest lists (other runs in the same folder, such as ablation trials, are not the
suite's), in the manifest's order, plus one row with status ``missing`` for each job that
has neither a record nor ``failed.json`` (not started, or still running), so nothing the
suite asked for disappears from a report. A folder without a manifest gives all its runs
(a run without a teacher trained with method ``none`` counts as a teacher there).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kdbench import store
from kdbench.store.checkpoints import safe_load
from kdbench.errors import CheckpointError, ConfigError, KDBenchError
from kdbench.spec import SELECTED_EPOCH
from kdbench.store import ManifestJob, load_manifest, load_results, runs_dir

# The rules an epoch is selected by, and the summary column each reads. A suite reports
# best_val or last; best_test is the papers' rule (mdistiller, RepDistiller), selected on
# test, so reports show it only beside published numbers, labelled.
SELECTION_COLUMN = {"best_val": "test_top1_best_val", "last": "test_top1_last", "best_test": "test_top1_max"}
SELECTION_TEXT = SELECTED_EPOCH


def suite_runs(suite_dir: str | Path) -> pd.DataFrame:
    """One row per run of the suite (see the module docstring), in manifest order."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise ConfigError(f"results folder '{suite_dir}' does not exist (kdbench run writes <out>/<suite name>/)")
    frame = load_results(suite_dir)
    jobs = load_manifest(suite_dir).jobs
    if frame.empty and not jobs:
        raise KDBenchError(f"no runs in '{suite_dir}': give a suite's results folder, e.g. results/quick")
    if not jobs:  # load_results calls every run "student" without a manifest; teachers are labelled
        return frame.assign(role=frame["role"].where(frame["label"] != "teacher", "teacher"))
    found = set(frame["run_id"]) if len(frame) else set()
    missing = [_missing_row(job) for job in jobs if job.run_id not in found]
    frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True) if missing else frame
    order = {job.run_id: i for i, job in enumerate(jobs)}
    frame = frame[frame["run_id"].isin(order)]
    return frame.sort_values("run_id", key=lambda ids: ids.map(order)).reset_index(drop=True)


def _missing_row(job: ManifestJob) -> dict[str, Any]:
    """A job with no result, as the manifest describes it."""
    return {"run_id": job.run_id, "status": "missing", "label": job.label, "role": job.role,
            "pair": job.pair, "dataset": job.dataset, "seed": job.seed,
            "error": "no record: not started, or still running"}


def paper_key(dataset: str, pair: str) -> str:
    """The key of a suite's ``paper`` mapping: ``dataset/teacher/student``."""
    return "/".join([dataset, *pair.split("→")])


def columns(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, pair) combinations of the runs that have a dataset, in row order."""
    known = frame.dropna(subset=["dataset"])
    return list(dict.fromkeys(zip(known["dataset"], known["pair"])))


def labels(frame: pd.DataFrame) -> list[str]:
    """Method labels in report order: teacher, none, then as the suite lists them."""
    found = list(dict.fromkeys(frame["label"]))
    first = [label for label in ("teacher", "none") if label in found]
    return first + [label for label in found if label not in first]


def read_run_metrics(suite_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of a finished run (from its record), as its rows are written."""
    return [row.dump() for row in store.read_run_file(runs_dir(suite_dir) / run_id / store.RECORD).metrics]


def read_test_logits(suite_dir: Path, run_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A finished run's final test-set logits (float64) and labels, or None without the file
    (or with a corrupt one, which is warned about)."""
    path = runs_dir(suite_dir) / run_id / store.TEST_LOGITS
    if not path.exists():
        return None
    try:
        saved = safe_load(path)
        return saved["logits"].double(), saved["labels"]
    except (CheckpointError, KeyError, TypeError, AttributeError) as exc:
        problem = str(exc) if isinstance(exc, CheckpointError) else f"'{path}' holds no logits and labels ({exc})"
        warnings.warn(f"{problem}; that run's spectrum is left out", stacklevel=2)
        return None
