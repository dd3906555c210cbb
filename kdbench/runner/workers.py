"""The worker side: what a process started by an executor does with a cohort.

``execute_cohort`` trains a cohort's runs in this process, each under its run lock, and
answers per run with a ``WorkerAnswer`` (a ``WorkerOutcome`` and why); ``launch_cohort``
starts it in one process per device (torchrun's launcher) for a data-parallel job;
``CohortJob`` is it as a Slurm job that submitit requeues. Each trains through
``runs.ensure_runs``, the run-level step they share with ``kdbench train`` and the ablations.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch

from .. import store
from ..errors import MachineError, RunStopped
from ..spec import RunSpec
from ..engine import EngineOptions, distributed, resolve_device
from .runs import CohortOutOfMemory, ensure_runs


class WorkerOutcome(StrEnum):
    """What a worker did with a run this time (not where the run stands: ``store.RunStatus``)."""

    FINISHED = "finished"  # trained to its end
    FAILED = "failed"  # ended by its exception, booked in failed.json
    BUSY = "busy"  # another process holds its lock: it is training it
    SKIPPED = "skipped"  # finished meanwhile by another process
    SPLIT = "split"  # its cohort ran out of device memory: train it in smaller ones
    MACHINE = "machine"  # the machine failed, not the run
    STOPPED = "stopped"  # its options.on_epoch stopped it (RunStopped): kept to resume


@dataclass(frozen=True)
class WorkerAnswer:
    """A worker's answer for one run, as it comes back to the scheduler (pickled, from a
    process or a Slurm job): what it did, and why unless the run finished."""

    status: WorkerOutcome
    reason: str = ""


@dataclass(frozen=True)
class CohortTask:
    """A cohort as a worker receives it: its specs as JSON, the runs folder, the engine
    options and the suite's method files (a spawned process registers them again)."""

    specs: list[dict[str, Any]]
    runs_dir: str
    options: EngineOptions
    method_files: list[str]


def execute_cohort(spec_jsons: list[dict[str, Any]], runs_dir: str, options: EngineOptions,
                   method_files: list[str]) -> dict[str, WorkerAnswer]:
    """Train runs together in this process, each under its own lock. Returns, per run id,
    its ``WorkerAnswer``.

    As one of several processes of a data-parallel job (``launch_cohort``, or a Slurm job
    with several tasks) it joins the others; the first takes the locks and decides."""
    from ..method import load_method_files

    _join_slurm_tasks()
    if method_files:
        load_method_files(*method_files)
    if distributed.launched():
        distributed.setup(resolve_device(options.device))
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, WorkerAnswer] = {}
    with contextlib.ExitStack() as locks:
        if options.threads:  # the caller's own count comes back after (tuning calls this in its process)
            locks.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(options.threads)
        todo = []
        for spec in (RunSpec(**s) for s in spec_jsons) if distributed.is_main() else ():
            if not locks.enter_context(store.run_lock(runs, spec.run_id)):
                outcome[spec.run_id] = WorkerAnswer(WorkerOutcome.BUSY, "running in another kdbench process")
                continue
            failure = store.RunFolder.of(runs, spec.run_id).failure
            if store.finished_record(runs, spec.run_id) is not None:  # a corrupt one is set aside
                outcome[spec.run_id] = WorkerAnswer(WorkerOutcome.SKIPPED, "finished by another kdbench process")
            elif failure.exists():  # the scheduler cleared it before starting
                error = store.read_run_file(failure).error
                outcome[spec.run_id] = WorkerAnswer(WorkerOutcome.FAILED, f"in another kdbench process: {error}")
            else:
                todo.append(spec)
        outcome, todo = distributed.broadcast_object((outcome, todo))
        for spec, result in zip(todo, ensure_runs(todo, runs, options)):
            status = (WorkerOutcome.SPLIT if isinstance(result, CohortOutOfMemory) else
                      WorkerOutcome.MACHINE if isinstance(result, MachineError) else
                      WorkerOutcome.STOPPED if isinstance(result, RunStopped) else
                      WorkerOutcome.FAILED if isinstance(result, BaseException) else WorkerOutcome.FINISHED)
            outcome[spec.run_id] = WorkerAnswer(status, f"{type(result).__name__}: {result}"
                                                if status != WorkerOutcome.FINISHED else "")
    if torch.cuda.is_initialized():
        gc.collect()  # a failed run's error holds its frames, and through them its tensors
        torch.cuda.empty_cache()  # the next job on this GPU may run in another worker process
    return outcome


def launch_cohort(devices: tuple[str, ...], spec_jsons: list[dict[str, Any]], runs_dir: str, options: EngineOptions,
                  method_files: list[str]) -> dict[str, WorkerAnswer]:
    """``execute_cohort`` in one process per device, data-parallel (torchrun's launcher,
    with a rendezvous on a free local port); rank 0's answer."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if len(devices) == 1:
        return execute_cohort(spec_jsons, runs_dir, replace(options, device=devices[0]), method_files)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=len(devices), run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    gpus = job_gpus(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    env = {"CUDA_VISIBLE_DEVICES": gpus} if gpus else {}
    with patch.dict(os.environ, OMP_NUM_THREADS=str(options.threads or 1), **env):  # else the launcher sets 1
        device = "cuda" if gpus else devices[0]
        answers = elastic_launch(config, execute_cohort)(spec_jsons, runs_dir, replace(options, device=device),
                                                         method_files)
    return answers[0]


def job_gpus(devices: tuple[str, ...], visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a job's processes, rank r training on cuda:r of what it
    sees (``distributed.setup``): the job's GPUs as the machine names them, given what the
    runner itself sees (``visible``, e.g. a Slurm allocation); '' for CPU devices."""
    indices = [int(d.split(":")[1]) for d in devices if d.startswith("cuda:")]
    return ",".join(visible.split(",")[i] if visible else str(i) for i in indices)


def _train_on_past_the_last_requeue() -> None:
    """Once a job has run into its time limit ``max_num_timeout`` times, submitit's handler
    of the limit's signal raises ``UncompletedJobError`` instead of requeuing it: raised in
    whatever step was training, it would be booked as that run's failure (seen on a real
    Slurm). Here it is reported and training goes on until Slurm ends the job at its limit
    (state TIMEOUT), which the runner books as stopped: the same command resumes its runs."""
    import signal

    from submitit.core.job_environment import JobEnvironment
    from submitit.core.utils import UncompletedJobError

    number = getattr(signal, f"SIG{JobEnvironment.USR_SIG}")  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says
    handler = signal.getsignal(number)
    if not callable(handler):  # not in a submitit job
        return

    def handle(signum: int, frame: Any) -> None:
        try:
            handler(signum, frame)
        except UncompletedJobError as exc:
            print(f"kdbench: {exc} Training goes on until Slurm ends the job; `kdbench run` resumes its runs.",
                  flush=True)

    signal.signal(number, handle)


def _as_this_jobs(runs: Path, run_id: str, answer: WorkerAnswer) -> WorkerAnswer:
    """FINISHED for a run this Slurm job finished before Slurm requeued it: a time limit's
    signal that comes between a run's record and the job's answer requeues a job whose run
    is finished, and that run is the job's own, not another runner's (its record names the
    job, which keeps its id when requeued)."""
    if answer.status != WorkerOutcome.SKIPPED:
        return answer
    record, job = store.finished_record(runs, run_id), os.environ.get("SLURM_JOB_ID")
    return WorkerAnswer(WorkerOutcome.FINISHED) if record and job and record.environment.slurm_job == job else answer


def _join_slurm_tasks() -> None:
    """In a submitit job of several tasks, export what torch.distributed reads (rank, world
    size, address of the first task), so that the tasks train as one data-parallel job."""
    if "WORLD_SIZE" in os.environ:
        return
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not in a submitit job
        return
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class CohortJob:
    """``execute_cohort`` as a Slurm job that submitit requeues when Slurm preempts it or
    its time runs out: submitit calls ``checkpoint`` on its signal, which resubmits the
    same cohort; its runs then resume from their last epoch checkpoints (nothing else
    needs saving). This is ``submitit.helpers.Checkpointable``'s behaviour, without
    importing submitit where it is not used."""

    def __call__(self, spec_jsons: list[dict[str, Any]], runs_dir: str, options: EngineOptions,
                 method_files: list[str]) -> dict[str, WorkerAnswer]:
        _train_on_past_the_last_requeue()
        answers = execute_cohort(spec_jsons, runs_dir, options, method_files)
        return {run_id: _as_this_jobs(Path(runs_dir), run_id, answer) for run_id, answer in answers.items()}

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)
