"""A run, from the worker's side: read its record if it finished, else train it (resuming
any checkpoint) and book a failure in the store. ``ensure_runs`` is the step every way of
training shares: the runner's workers, ``kdbench train`` and the ablations' trials.
"""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from .. import store
from ..engine import EngineOptions, distributed, train_cohort
from ..errors import ConfigError, KDBenchError, MachineError, RunStopped
from ..spec import RunSpec


class CohortOutOfMemory(KDBenchError):
    """The device ran out of memory while several runs trained together: they may fit in
    smaller cohorts (the runner halves it). Their last epoch checkpoints are kept."""

    def __init__(self, runs: int) -> None:
        super().__init__(f"out of device memory with {runs} runs training together")


# errors of the machine rather than the run: no space or quota, a disk or network file
# system failing, a file system gone read-only, no memory left
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOMEM})


def as_machine_error(error: BaseException) -> BaseException:
    """``error`` as a MachineError when the machine failed rather than the run."""
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        machine = MachineError(f"the machine failed, not the run: {error}; fix it (free disk space, check the disk) "
                               "and run the same command again")
        machine.__cause__ = error
        return machine
    return error


def teacher_weights(spec: RunSpec, out: Path) -> Path | None:
    """The weights file the run's teacher loads: its checkpoint, or its run's weights at the
    epoch ``TeacherRef.weights`` names."""
    if spec.teacher is None:
        return None
    if spec.teacher.checkpoint is not None:
        return Path(spec.teacher.checkpoint).expanduser()
    weights = store.RunFolder.of(out, str(spec.teacher.run_id)).weights_at(spec.teacher.weights)
    if not weights.exists():
        raise ConfigError(
            f"run '{spec.describe()}' needs teacher run {spec.teacher.run_id}, which has not finished "
            f"(no {weights}); train the teacher first"
        )
    return weights


def ensure_run(spec: RunSpec, out: Path, options: EngineOptions | None = None) -> store.RunRecord:
    """The run's record: read if finished, else trained (resuming any checkpoint).

    A failure is written to ``failed.json`` with its reason before the error propagates;
    a later successful attempt removes it.
    """
    result = ensure_runs([spec], out, options)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def ensure_runs(specs: list[RunSpec], out: Path, options: EngineOptions | None = None
                ) -> list[store.RunRecord | BaseException]:
    """``ensure_run`` for a cohort (see ``engine.train_cohort``): the unfinished runs
    train together; each result is a record or the exception that ended that run. The
    device running out of memory in a cohort of several (at set-up, in the teacher's
    forward or a student's step) is ``CohortOutOfMemory`` for all, and no run's failure;
    nor is a ``MachineError`` (e.g. the disk filling up)."""
    out = Path(out)
    results: dict[str, store.RunRecord | BaseException] = {}
    todo = []
    for spec in specs:
        record = store.finished_record(out, spec.run_id)
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
                store.write_failure(out / spec.run_id, spec, result)
            else:
                store.RunFolder.of(out, spec.run_id).failure.unlink(missing_ok=True)
    return [results[s.run_id] for s in specs]
