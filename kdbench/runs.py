"""One run in a results folder: skip it when finished, resume it when interrupted, record
why when it fails. Runs live at ``<out>/<run id>/`` (see ``records`` for the files)."""

from __future__ import annotations

import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import distributed, records
from .errors import ConfigError, KDBenchError
from .spec import RunSpec
from .training import EngineOptions, train_cohort

FAILED = "failed.json"


class CohortOutOfMemory(KDBenchError):
    """The device ran out of memory while several runs trained together: they may fit in
    smaller cohorts (the runner halves it). Their last epoch checkpoints are kept."""

    def __init__(self, runs: int) -> None:
        super().__init__(f"out of device memory with {runs} runs training together")


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
    result = ensure_runs([spec], out, options)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def ensure_runs(specs: list[RunSpec], out: Path, options: EngineOptions | None = None
                ) -> list[dict[str, Any] | BaseException]:
    """``ensure_run`` for a cohort (see ``training.train_cohort``): the unfinished runs
    train together; each result is a record or the exception that ended that run. The
    device running out of memory in a cohort of several (at set-up, in the teacher's
    forward or a student's step) is ``CohortOutOfMemory`` for all, and no run's failure."""
    out = Path(out)
    results: dict[str, dict[str, Any] | BaseException] = {}
    todo = []
    for spec in specs:
        record = finished_record(out, spec.run_id)
        if record is not None:
            results[spec.run_id] = record
        else:
            todo.append(spec)
    if todo:
        lead = next((s for s in todo if s.teacher is not None), todo[0])
        try:
            trained = train_cohort(todo, [out / s.run_id for s in todo], options, teacher_weights(lead, out))
        except Exception as exc:  # every run of the cohort ends with it
            if isinstance(exc, torch.OutOfMemoryError) and len(todo) > 1:
                exc = CohortOutOfMemory(len(todo))
            trained = [exc] * len(todo)
        for spec, result in zip(todo, trained):
            results[spec.run_id] = result
            # under torchrun, rank 0 keeps the books; a cohort too large is no run's failure
            if not distributed.is_main() or isinstance(result, CohortOutOfMemory):
                continue
            if isinstance(result, BaseException):
                _record_failure(spec, out / spec.run_id, result)
            else:
                (out / spec.run_id / FAILED).unlink(missing_ok=True)
    return [results[s.run_id] for s in specs]


def _record_failure(spec: RunSpec, run_dir: Path, error: BaseException) -> None:
    records.write_json(run_dir / FAILED, {
        "run_id": spec.run_id,
        "status": "failed",
        "spec": spec.model_dump(mode="json"),
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "time": datetime.now(timezone.utc).isoformat(),
    })
