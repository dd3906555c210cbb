"""One run in a results folder: skip it when finished, resume it when interrupted, record
why when it fails. Runs live at ``<out>/<run id>/`` (see ``records`` for the files)."""

from __future__ import annotations

import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import records
from .errors import ConfigError
from .spec import RunSpec
from .training import EngineOptions, train_run

FAILED = "failed.json"


def finished_record(out: Path, run_id: str) -> dict[str, Any] | None:
    path = Path(out) / run_id / records.RECORD
    return records.read_json(path) if path.exists() else None


def teacher_weights(spec: RunSpec, out: Path) -> Path | None:
    if spec.teacher is None:
        return None
    if spec.teacher.checkpoint is not None:
        return Path(spec.teacher.checkpoint).expanduser()
    weights = Path(out) / str(spec.teacher.run_id) / records.WEIGHTS
    if not weights.exists():
        raise ConfigError(
            f"run '{spec.describe()}' needs teacher run {spec.teacher.run_id}, which has not finished "
            f"(no {weights}); train the teacher first"
        )
    return weights


def ensure_run(spec: RunSpec, out: Path, options: EngineOptions | None = None) -> dict[str, Any]:
    """The run's record: read if finished, else trained (resuming any checkpoint).

    A failure is written to ``failed.json`` with its reason before the error propagates;
    a later successful attempt removes it.
    """
    out = Path(out)
    record = finished_record(out, spec.run_id)
    if record is not None:
        return record
    run_dir = out / spec.run_id
    try:
        record = train_run(spec, run_dir, options, teacher_weights(spec, out))
    except Exception as exc:
        records.write_json(run_dir / FAILED, {
            "run_id": spec.run_id,
            "status": "failed",
            "spec": spec.model_dump(mode="json"),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "time": datetime.now(timezone.utc).isoformat(),
        })
        raise
    (run_dir / FAILED).unlink(missing_ok=True)
    return record
