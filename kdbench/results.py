"""The results store: every run record of a suite folder as one pandas DataFrame.

Records are the source of truth; this only reads them. Each row is one run: its status
(finished / failed), the method label and pair from the suite's manifest, the spec
flattened to columns (``spec.recipe.lr``, ``spec.hparams.temperature``, …), the summary
metrics, timing and parameter counts. Failed runs are rows too, with their ``error``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import records
from .runs import FAILED

RUNS = "runs"
MANIFEST = "manifest.json"


def load_manifest(suite_dir: str | Path) -> dict[str, Any]:
    path = Path(suite_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"jobs": [], "paper": {}, "selection": "best_val"}


def runs_dir(suite_dir: str | Path) -> Path:
    """Where a suite folder keeps its runs (``runs/``), or the folder itself for loose runs."""
    suite_dir = Path(suite_dir)
    return suite_dir / RUNS if (suite_dir / RUNS).is_dir() else suite_dir


def load_results(suite_dir: str | Path) -> pd.DataFrame:
    """One row per run under ``suite_dir/runs`` (or ``suite_dir`` itself for loose runs)."""
    suite_dir = Path(suite_dir)
    runs = runs_dir(suite_dir)
    jobs = {j["run_id"]: j for j in load_manifest(suite_dir)["jobs"]}
    rows = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        record_path, failed_path = run_dir / records.RECORD, run_dir / FAILED
        if record_path.exists():
            record = records.read_json(record_path)
        elif failed_path.exists():
            record = records.read_json(failed_path)
        else:
            continue
        job = jobs.get(record["run_id"], {})
        spec = record["spec"]
        row: dict[str, Any] = {
            "run_id": record["run_id"],
            "status": record["status"],
            "label": job.get("label", "teacher" if spec["teacher"] is None and spec["method"] == "none" else spec["method"]),
            "role": job.get("role", "student"),
            "pair": job.get("pair", _pair(spec)),
            "dataset": spec["dataset"]["name"],
            "method": spec["method"],
            "student": spec["student"],
            "teacher": (spec["teacher"] or {}).get("model"),
            "seed": spec["seed"],
            "error": record.get("error"),
        }
        row.update(_flatten("spec", spec))
        for section in ("summary", "timing", "parameters"):
            row.update({f"{section}.{k}" if section != "summary" else k: v for k, v in record.get(section, {}).items()})
        row["epochs_done"] = len(record.get("metrics", []))
        rows.append(row)
    return pd.DataFrame(rows)


def _pair(spec: dict[str, Any]) -> str:
    return f"{spec['teacher']['model']}→{spec['student']}" if spec.get("teacher") else spec["student"]


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: value if not isinstance(value, list) else json.dumps(value)}
