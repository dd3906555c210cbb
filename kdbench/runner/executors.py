"""Where cohorts run: the machine's devices as slots, and the two executors the scheduler
submits to, a local process pool and Slurm through submitit.

An executor takes a slot (the devices of one job, one process each) and a cohort
(``CohortTask``) and answers with a ``Handle``; ``close(stop)`` ends it, at once when the
runner is stopped (SIGINT, SIGTERM, a machine failure): the local pool's processes are
ended (their runs resume from their last epochs, their locks die with them), while Slurm
jobs go on without the runner (a rerun waits on them through the run locks).

A Slurm job's state comes from ``squeue`` (``SlurmQueue``), not from ``sacct`` as submitit
reads it: a cluster without accounting (no slurmdbd) answers sacct with an error, and a
job cancelled there would leave the runner waiting for ever. A job that ends without its
answer because the cluster ended it (``scancel``, a time limit its requeues did not
outlast, a node failing) raises ``JobEnded``: its runs are no one's failure and resume
from their last epochs when the suite runs again.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol
from unittest.mock import patch

from ..engine import usable_cores
from ..errors import ConfigError, KDBenchError
from ..suite import ExecutorEntry
from .workers import CohortJob, CohortTask, launch_cohort

Slot = tuple[str, ...]  # the devices of one job, one process each


class Handle(Protocol):
    """A submitted cohort: whether it has started (a Slurm job may wait in the queue, and
    wait again once requeued), whether it has ended, and its answer."""

    def started(self) -> bool: ...

    def done(self) -> bool: ...

    def result(self) -> Any: ...


class Executor(Protocol):
    def submit(self, slot: Slot, cohort: CohortTask) -> Handle: ...

    def close(self, stop: bool) -> None: ...


class WorkerPool(ProcessPoolExecutor):
    """Spawned worker processes that leave a Ctrl-C to their parent, which ends them
    (``close(stop=True)``; their runs resume from their last epochs, their locks die with
    them), and whose OpenMP threads spin briefly before they sleep (``_short_openmp_spin``)."""

    def __init__(self, processes: int) -> None:
        super().__init__(max_workers=processes, mp_context=get_context("spawn"))

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        # both inherited by the processes it starts
        with _sigint_ignored(), _short_openmp_spin():
            return super().submit(fn, *args, **kwargs)

    def close(self, stop: bool) -> None:
        """Wait for the submitted work, or, with ``stop``, end the processes now (SIGTERM,
        SIGKILL after a grace period) and drop what has not started."""
        if stop:
            _stop_workers(self)
        self.shutdown(wait=not stop, cancel_futures=True)


class LocalExecutor:
    """One worker process per slot (``WorkerPool``); a data-parallel job starts its own
    processes (``launch_cohort``)."""

    def __init__(self, slots: int) -> None:
        self.pool = WorkerPool(slots)

    def submit(self, slot: Slot, cohort: CohortTask) -> Handle:
        return LocalJob(self.pool.submit(launch_cohort, slot, cohort.specs, cohort.runs_dir, cohort.options,
                                         cohort.method_files))

    def close(self, stop: bool) -> None:
        self.pool.close(stop)


class SlurmExecutor:
    """One Slurm job per cohort (``CohortJob``: requeued when preempted), with the suite's
    ``executor.slurm`` parameters; ``cluster: local`` or ``debug`` runs submitit without Slurm."""

    def __init__(self, config: ExecutorEntry, folder: Path) -> None:
        import submitit

        slurm = dict(config.slurm)
        cluster = slurm.pop("cluster", None)
        # how many time limits a job may run into, each time requeued (submitit's default 3)
        requeues = slurm.pop("max_num_timeout", slurm.pop("slurm_max_num_timeout", None))
        self.pool = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                          **({"slurm_max_num_timeout": requeues} if requeues is not None else {}))
        tasks = {"tasks_per_node": config.processes_per_job} if config.processes_per_job > 1 else {}
        if slurm or tasks:
            self.pool.update_parameters(**{**tasks, **slurm})
        self.queue = SlurmQueue() if self.pool.cluster == "slurm" else None

    def submit(self, slot: Slot, cohort: CohortTask) -> Handle:
        job = self.pool.submit(CohortJob(), cohort.specs, cohort.runs_dir, replace(cohort.options, device=slot[0]),
                               cohort.method_files)
        return SlurmJob(job, self.queue, time.time()) if self.queue else LocalJob(FirstTask(job))

    def close(self, stop: bool) -> None:
        """Slurm jobs go on without the runner (a rerun waits on them)."""


def slurm_cpus(config: ExecutorEntry) -> int:
    """The cores a Slurm job of the suite asks for per task (submitit's ``cpus_per_task``,
    Slurm's default 1), which its runs train on: a node that does not bind a job to its
    cores (``TaskPlugin=task/none``) would let torch take every core of the node, and the
    threads a run computes with change its float sums, so its record would depend on
    the node it landed on."""
    slurm = config.slurm
    return int(slurm.get("slurm_cpus_per_task", slurm.get("cpus_per_task", 1)))


@dataclass
class LocalJob:
    """A job that starts when submitted: a local worker's, or submitit's without Slurm."""

    job: Any  # what answers done() and result()

    def started(self) -> bool:
        return True

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> Any:
        return self.job.result()


@dataclass
class FirstTask:
    """A submitit job answering with its first task's result (every task of a
    data-parallel job returns the first one's answer)."""

    job: Any

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> Any:
        return self.job.results()[0]


class JobEnded(KDBenchError):
    """The cluster ended a job before it answered (``scancel``, a time limit its requeues
    did not outlast, a node failing): its runs did not fail and resume from their last
    epochs when the suite runs again."""


# states of a job that the cluster ended before it could answer; FAILED, OUT_OF_MEMORY, or
# a job gone without its answer, is the job's own end, which the runner books as its runs'
CLUSTER_ENDED = frozenset({"CANCELLED", "TIMEOUT", "DEADLINE", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED"})
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"})
ACTIVE = QUEUED | {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


class SlurmQueue:
    """This user's Slurm jobs and their states as ``squeue`` lists them (ended ones too,
    while slurmctld keeps them: ``MinJobAge``, 300 s by default), read for all of the
    runner's jobs at once, at most every ``every`` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.read_at = float("-inf")  # when the states were last read
        self.states: dict[str, str] = {}

    def state(self, job_id: str, submitted: float) -> str | None:
        """The job's state; None while the last reading predates its submission (or squeue
        fails), "" once squeue no longer lists it."""
        if time.time() - self.read_at > self.every:
            listed = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T",
                                     f"--user={getpass.getuser()}"], capture_output=True, text=True)
            if listed.returncode == 0:
                self.states = dict(line.split()[:2] for line in listed.stdout.splitlines() if line.strip())
                self.read_at = time.time()
        if self.read_at < submitted:
            return None
        return self.states.get(job_id, "")


@dataclass
class SlurmJob:
    """A cohort's Slurm job: queued until Slurm starts it (and again while requeued),
    done once its answer is written or Slurm has ended it."""

    job: Any  # submitit's
    queue: SlurmQueue
    submitted: float  # time.time() at submission
    ended_at: float | None = None  # the reading that first showed it ended

    def _state(self) -> str | None:
        return self.queue.state(str(self.job.job_id), self.submitted)

    def started(self) -> bool:
        return self._state() not in QUEUED | {None}

    def done(self) -> bool:
        """Its answer is written, or two readings of the queue show it ended (a job being
        requeued may pass through an ended state, e.g. PREEMPTED)."""
        if self.job.task(0).paths.result_pickle.exists():
            return True
        if self._state() in ACTIVE | {None}:
            self.ended_at = None
            return False
        if self.ended_at is None:
            self.ended_at = self.queue.read_at
        return self.queue.read_at > self.ended_at

    def result(self) -> Any:
        """Its first task's answer (every task of a data-parallel job returns the first
        one's); ``JobEnded`` if the cluster ended it first."""
        first = self.job.task(0)
        if first.paths.result_pickle.exists():
            return first.result()  # raises the job's own exception, with its traceback
        state = self._state() or "no longer listed by squeue"
        if state in CLUSTER_ENDED:
            raise JobEnded(f"Slurm job {self.job.job_id} ended ({state}) before its runs finished")
        log = first.paths.stderr
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
        raise RuntimeError(f"Slurm job {self.job.job_id} ended ({state}) without an answer; its log {log} "
                           f"ends:\n{tail}")


def make_slots(device: str, workers: int | None, processes: int) -> list[Slot]:
    """The machine's devices as ``workers`` jobs' worth of ``processes`` devices each."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if processes > len(gpus):
            raise ConfigError(f"executor.processes_per_job is {processes}, but this machine has {len(gpus)} GPU(s); "
                              f"lower it to {len(gpus)} or run on a machine with more GPUs")
        slots = [tuple(gpus[i:i + processes]) for i in range(0, len(gpus) - processes + 1, processes)]
        return slots[: workers or len(slots)]
    if device not in ("auto", "cpu"):
        if processes > 1:
            raise ConfigError(f"executor.processes_per_job is {processes}, but --device {device} names one device; "
                              "use --device cuda (every GPU of the machine) or cpu")
        return [(device,)] * (workers or 1)
    return [("cpu",) * processes] * (workers or max(1, min(usable_cores(), 8) // processes))


@contextlib.contextmanager
def _sigint_ignored() -> Any:
    """SIGINT ignored for the block, in the main thread (child processes started in it
    inherit the disposition, so Python installs no KeyboardInterrupt handler in them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _short_openmp_spin() -> Any:
    """GOMP_SPINCOUNT=10000 for the worker processes started in the block, unless the
    environment sets how OpenMP threads wait (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``).
    A thread that finishes its part of a parallel region waits for the next one: libgomp
    (PyTorch's OpenMP on Linux) spins 300,000 times by default, which a machine with more
    runnable processes than cores pays for in stolen time slices, while sleeping at once
    (``OMP_WAIT_POLICY=PASSIVE``) pays a wake-up per region. A short spin costs about what
    the default does on a quiet machine and about what sleeping does on a busy one (the
    timings: docs/speed.md, "Cores"). One thread waits for no other, and how threads wait
    does not change what they compute: records stay the same."""
    if {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        return contextlib.nullcontext()
    return patch.dict(os.environ, {"GOMP_SPINCOUNT": "10000"})


def _stop_workers(pool: ProcessPoolExecutor, grace: float = 10.0) -> None:
    """End the pool's processes now (SIGTERM, SIGKILL after ``grace`` seconds); their
    runs resume from their last epoch checkpoints, their locks die with them."""
    workers = list((pool._processes or {}).values())  # Python before 3.14 has no terminate_workers()
    for worker in workers:
        worker.terminate()
    deadline = time.time() + grace
    for worker in workers:
        worker.join(max(0.0, deadline - time.time()))
        if worker.is_alive():
            worker.kill()
            worker.join()
