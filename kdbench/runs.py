"""One run in a results folder: skip it when finished, resume it when interrupted, record
why when it fails. Runs live at ``<out>/<run id>/`` (see ``records`` for the files).

What is read back is checked (``read_run_file``): a ``record.json`` cut short or garbled is
not a finished run; it is set aside (renamed, kept) and the run is done again. A failure
of the machine (a full disk, an I/O error: ``MachineError``) is no failure of the run: it
is not booked in ``failed.json``, so a plain rerun retries it."""

from __future__ import annotations

import errno
import json
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import distributed, records
from .checkpoints import safe_load, set_aside
from .errors import CheckpointError, ConfigError, KDBenchError, MachineError, RunStopped
from .spec import RunSpec
from .engine import EngineOptions, train_cohort

FAILED = "failed.json"


class CohortOutOfMemory(KDBenchError):
    """The device ran out of memory while several runs trained together: they may fit in
    smaller cohorts (the runner halves it). Their last epoch checkpoints are kept."""

    def __init__(self, runs: int) -> None:
        super().__init__(f"out of device memory with {runs} runs training together")


# errors of the machine rather than the run: no space or quota, a disk or network file
# system failing, a file system gone read-only, no memory left
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOMEM})


class CorruptResultsFile(KDBenchError):
    """A file of a results folder (a run's record.json or failed.json, a manifest) that is
    not what kdbench writes."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


# what every reader of a run file relies on, by key: (type, what it is)
_RUN_FIELDS = {"run_id": str, "status": str, "spec": dict}
_KIND_FIELDS = {records.RECORD: {"summary": dict, "metrics": list}, FAILED: {"error": str}}
_SPEC_FIELDS = {"dataset": dict, "method": str, "student": str, "seed": int}


def read_run_file(path: Path) -> dict[str, Any]:
    """A run's ``record.json`` or ``failed.json``, checked to hold what readers use;
    ``CorruptResultsFile`` names the file and what is wrong with it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise CorruptResultsFile(path, "not text (binary garbage)") from None
    except json.JSONDecodeError as exc:
        raise CorruptResultsFile(path, f"not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}; "
                                   "cut short or overwritten)") from None
    if not isinstance(payload, dict):
        raise CorruptResultsFile(path, f"holds a JSON {type(payload).__name__}, not a run's record")
    status = "finished" if path.name == records.RECORD else "failed"
    problems = _missing(payload, {**_RUN_FIELDS, **_KIND_FIELDS.get(path.name, {})}, "")
    if not problems:
        problems = _missing(payload["spec"], _SPEC_FIELDS, "spec.")
        if not isinstance(payload["spec"].get("dataset", {}).get("name"), str):
            problems.append("spec.dataset.name is missing")
        if not isinstance(payload["spec"].get("teacher", 0), (dict, type(None))):
            problems.append("spec.teacher is missing or not an object or null")
        if payload["status"] != status:
            problems.append(f"status is {payload['status']!r}, not {status!r}")
    if problems:
        raise CorruptResultsFile(path, "not a run's record: " + "; ".join(problems))
    return payload


def _missing(payload: dict[str, Any], fields: dict[str, type], prefix: str) -> list[str]:
    return [f"{prefix}{key} is missing" if key not in payload else f"{prefix}{key} is not a {kind.__name__}"
            for key, kind in fields.items() if not isinstance(payload.get(key), kind)]


def finished_record(out: Path, run_id: str) -> dict[str, Any] | None:
    """The run's record, or None when it has none; a corrupt one is set aside."""
    path = Path(out) / run_id / records.RECORD
    if not path.exists():
        return None
    try:
        return read_run_file(path)
    except CorruptResultsFile as exc:
        set_aside(path, str(exc))
        return None


def set_aside_unsound_weights(run_dir: Path) -> bool:
    """A finished run whose ``weights.pt`` is missing or cannot be read (a teacher that its
    students load) has its record and weights set aside, so that it is trained again;
    returns whether it had."""
    weights, record = Path(run_dir) / records.WEIGHTS, Path(run_dir) / records.RECORD
    try:
        if not weights.exists():
            raise CheckpointError(f"checkpoint '{weights}' is missing")
        safe_load(weights)
    except CheckpointError as exc:
        if weights.exists():
            set_aside(weights, str(exc))
        set_aside(record, f"{record} has no sound weights ({exc})")
        return True
    return False


def as_machine_error(error: BaseException) -> BaseException:
    """``error`` as a MachineError when the machine failed rather than the run."""
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        machine = MachineError(f"the machine failed, not the run: {error}; fix it (free disk space, check the disk) "
                               "and run the same command again")
        machine.__cause__ = error
        return machine
    return error


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
    """``ensure_run`` for a cohort (see ``engine.train_cohort``): the unfinished runs
    train together; each result is a record or the exception that ended that run. The
    device running out of memory in a cohort of several (at set-up, in the teacher's
    forward or a student's step) is ``CohortOutOfMemory`` for all, and no run's failure;
    nor is a ``MachineError`` (e.g. the disk filling up)."""
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
            result = as_machine_error(result)
            results[spec.run_id] = result
            # under torchrun, rank 0 keeps the books; a cohort too large, a machine failing,
            # or a run its on_epoch stopped (a pruned trial, to resume) is no run's failure
            if not distributed.is_main() or isinstance(result, (CohortOutOfMemory, MachineError, RunStopped)):
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
