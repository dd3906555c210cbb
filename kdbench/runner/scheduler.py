"""The scheduler: a plan's cohorts onto its slots (``planning.Plan``), teachers before the
students that need them, and the book of what came of each run. Its cohorts are those of
the runs still to do, formed when it starts: which runs are finished is known only then.

It polls the running cohorts every second, starts each waiting cohort once its teachers
have finished and a slot is free, fails the runs whose teacher failed, halves a cohort
that ran out of device memory, hands cohorts that another runner is training back to the
queue (to start once that runner's lock is gone, unless it finished them), books the runs
of a Slurm job the cluster ended (``scancel``) as stopped, not failed, and stops the suite
on a failure of the machine. What it reports and its estimate of the time left come from
``progress.SuiteProgress``; a Slurm job still in the queue counts as waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .. import store
from ..store.checkpoints import set_aside
from ..engine import EngineOptions
from ..errors import ConfigError, MachineError
from .progress import SuiteProgress
from ..store import RunFolder, RunStatus, status_of
from ..suite import Job
from .executors import Executor, Handle, JobEnded, LocalExecutor, Slot, SlurmExecutor, slurm_cpus
from .planning import MAX_LOADER_WORKERS, Plan, form_cohorts
from .workers import CohortTask, WorkerAnswer, WorkerOutcome
from .runs import as_machine_error

POLL_SECONDS = 1.0
REPORT_SECONDS = 10.0  # between progress reports


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # finished before this call, or by another runner
    missing: list[str] = field(default_factory=list)  # inputs a dry run found missing (a run raises DataError)
    # ended by the cluster (scancel), or waiting for a teacher that was: a rerun resumes them
    stopped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing and not self.stopped


class Scheduler:
    def __init__(self, plan: Plan) -> None:
        self.plan, self.suite, self.runs, self.say = plan, plan.suite, plan.runs, plan.options.printer
        self.outcome = Outcome()
        self.slots = plan.slots
        self.progress = SuiteProgress(self.suite.name, self.runs, total=len(plan.jobs), slots=len(self.slots))
        self.elsewhere: set[str] = set()  # run ids another runner was training when this one's job came to them

    def run(self) -> Outcome:
        pending = self._pending()
        if not pending:
            self.say(f"[{self.suite.name}] nothing to do: {len(self.outcome.skipped)} runs already finished"
                     + (f", {len(self.outcome.failed)} failed (--retry-failed reruns them)" if self.outcome.failed else ""))
            return self.outcome
        units = form_cohorts(pending, self.suite.file.executor.cohort_size)
        self.say(f"[{self.suite.name}] {len(pending)} runs to do ({len(self.outcome.skipped)} already finished) "
                 f"in {len(units)} cohort(s) on {len(self.slots)} worker(s): {', '.join('+'.join(s) for s in self.slots)}")
        executor = self._executor()
        running: list[tuple[Handle, Slot, tuple[Job, ...]]] = []
        started: set[int] = set()  # the running units whose jobs have started (a Slurm job may wait in its queue)
        free = list(self.slots)
        last_report = 0.0
        stopped = True  # until the loop ends by itself: an interrupt or a machine failure stops the workers
        try:
            while units or running:
                for unit in list(units):
                    ready = self._ready(unit)
                    if ready is None:
                        continue
                    units.remove(unit)
                    if ready and free:
                        slot = free.pop(0)
                        cohort = CohortTask([j.spec.model_dump(mode="json") for j in ready], str(self.runs),
                                            self._job_options(slot, ready), [str(p) for p in self.suite.method_files()])
                        running.append((executor.submit(slot, cohort), slot, ready))
                    elif ready:
                        units.append(ready)
                for handle, _, unit in running:  # started, or queued again (a requeued Slurm job)
                    if not handle.started():
                        started.discard(id(unit))
                    elif id(unit) not in started:
                        self.progress.start(unit)
                        started.add(id(unit))
                self.progress.poll([unit for _, _, unit in running if id(unit) in started])
                for entry in [e for e in running if e[0].done()]:
                    running.remove(entry)
                    handle, slot, unit = entry
                    free.append(slot)
                    if id(unit) not in started:  # it ended between two polls
                        self.progress.start(unit)
                    started.discard(id(unit))
                    self.progress.finish(unit)
                    units.extend(self._finish(unit, handle))
                if time.time() - last_report > REPORT_SECONDS or not (units or running):
                    queued = [unit for _, _, unit in running if id(unit) not in started]
                    self.say(self.progress.report(len(self.outcome.finished) + len(self.outcome.skipped),
                                                  len(self.outcome.failed), units + queued,
                                                  [unit for _, _, unit in running if id(unit) in started]))
                    last_report = time.time()
                if running or units:
                    time.sleep(POLL_SECONDS)
            stopped = False
        finally:
            executor.close(stopped)
        return self.outcome

    def _pending(self) -> list[Job]:
        """The jobs to run: not finished (a corrupt record or failure set aside, a teacher
        whose weights are unsound trained again) and not failed unless --retry-failed."""
        pending: list[Job] = []
        teachers = {d for job in self.plan.jobs for d in job.depends_on}
        for job in self.plan.jobs:
            status = status_of(self.runs, job.run_id)
            folder = RunFolder.of(self.runs, job.run_id)
            if status == RunStatus.CORRUPT:
                for corrupt in store.corrupt_run_files(folder.path):
                    set_aside(corrupt.path, str(corrupt))
                status = status_of(self.runs, job.run_id)
            if status == RunStatus.FINISHED and job.run_id in teachers and store.set_aside_unsound_weights(folder.path):
                status = status_of(self.runs, job.run_id)  # its students need its weights: it trains again
            if status == RunStatus.FINISHED:
                self.outcome.skipped.append(job.run_id)
            elif status == RunStatus.FAILED and not self.plan.options.retry_failed:
                self.outcome.failed[job.run_id] = store.read_run_file(folder.failure).error
            else:
                if status == RunStatus.FAILED:
                    folder.failure.unlink()
                pending.append(job)
        return pending

    def _job_options(self, slot: Slot, unit: tuple[Job, ...]) -> EngineOptions:
        """The engine options of a job: on CPUs its intra-op threads, on GPUs its data-loader
        processes (unless --workers names them), from the job's share of the cores; on
        Slurm, its threads are the cores it asks for (``slurm_cpus``)."""
        options, cores = replace(self.plan.engine, progress=False), self.plan.cores
        share = min((cores[j.run_id] for j in unit if j.run_id in cores), default=None)
        if share is None:  # Slurm: the cores the job asks for, whatever the node has (the record's floats follow)
            return replace(options, threads=options.threads or slurm_cpus(self.suite.file.executor))
        if slot[0] == "cpu":
            return replace(options, threads=share)
        if slot[0].startswith("cuda") and options.workers is None:
            return replace(options, workers=min(MAX_LOADER_WORKERS, share))
        return options

    def _ready(self, unit: tuple[Job, ...]) -> tuple[Job, ...] | None:
        """The unit's jobs that can start now (after failing those whose teacher failed,
        stopping those whose teacher stopped, and dropping those another runner finished),
        or None while some of them still wait for a teacher or for another runner."""
        ready = []
        for job in unit:
            stopped = next((d for d in job.depends_on if d in self.outcome.stopped), None)
            if stopped:
                self.outcome.stopped[job.run_id] = f"teacher run {stopped} stopped"
                continue
            blocked = self._blocked(job)
            if blocked == "":
                return None
            if blocked:
                self._record_failure(job, blocked)
            elif job.run_id in self.elsewhere:
                with store.run_lock(self.runs, job.run_id) as mine:
                    if not mine:  # the other runner still trains it: no job of ours would get to it
                        return None
                self.elsewhere.discard(job.run_id)
                if status_of(self.runs, job.run_id) == RunStatus.FINISHED:
                    self.outcome.skipped.append(job.run_id)
                else:
                    ready.append(job)
            else:
                ready.append(job)
        return tuple(ready)

    def _blocked(self, job: Job) -> str | None:
        """None when the job can start, '' while it waits, else why it can never run."""
        for dependency in job.depends_on:
            status = status_of(self.runs, dependency)
            if status == RunStatus.FINISHED:
                continue
            if status == RunStatus.FAILED or dependency in self.outcome.failed:
                return f"teacher run {dependency} failed"
            return ""
        return None

    def _finish(self, unit: tuple[Job, ...], handle: Handle) -> list[tuple[Job, ...]]:
        """Book a finished cohort's results; returns the units still to run: jobs that wait
        for another runner, and the halves of a cohort that did not fit in memory."""
        try:
            results = handle.result()
        except JobEnded as exc:
            self.outcome.stopped.update({job.run_id: str(exc) for job in unit})
            self.say(f"[{self.suite.name}] {exc}: {', '.join(j.describe() for j in unit)} stopped, not failed; "
                     "they resume from their last epochs when the suite runs again")
            return []
        except Exception as exc:  # the worker process itself died
            if isinstance(as_machine_error(exc), MachineError):
                raise as_machine_error(exc) from exc
            reason = f"worker died: {type(exc).__name__}: {exc}"
            results = {j.run_id: WorkerAnswer(WorkerOutcome.FAILED, reason) for j in unit}
        if set(results) != {job.run_id for job in unit}:  # the job's kdbench computes other run ids
            raise ConfigError(f"[{self.suite.name}] a job answered for runs {', '.join(sorted(results))} where it "
                              f"was given {', '.join(j.run_id for j in unit)}: kdbench changed between the job's "
                              "submission and its start (a Slurm job imports the code it finds then); let the "
                              "jobs still queued end (scancel them) and run the same command again")
        elsewhere, split = [], []
        for job in unit:
            result = results[job.run_id]
            if result.status == WorkerOutcome.MACHINE:
                raise MachineError(f"[{self.suite.name}] stopped at {job.describe()}: {result.reason}; the runs "
                                   "finished so far are kept, the others resume from their last epochs")
            if result.status == WorkerOutcome.BUSY:
                elsewhere.append(job)
                self.elsewhere.add(job.run_id)
            elif result.status == WorkerOutcome.SPLIT:
                split.append(job)
            elif result.status == WorkerOutcome.SKIPPED:
                self.outcome.skipped.append(job.run_id)
            elif result.status == WorkerOutcome.FINISHED:
                self.outcome.finished.append(job.run_id)
            else:
                self.outcome.failed[job.run_id] = result.reason
                if not RunFolder.of(self.runs, job.run_id).failure.exists():
                    self._record_failure(job, result.reason)
                self.say(f"FAILED {job.describe()}: {result.reason}")
        if split:
            half = (len(split) + 1) // 2
            self.say(f"[{self.suite.name}] a cohort of {len(split)} runs ran out of device memory; "
                     f"it goes on as cohorts of {half} and {len(split) - half}, from the runs' last epochs")
            return [u for u in (tuple(elsewhere), tuple(split[:half]), tuple(split[half:])) if u]
        return [tuple(elsewhere)] if elsewhere else []

    def _record_failure(self, job: Job, reason: str) -> None:
        self.outcome.failed[job.run_id] = reason
        store.write_failure(self.runs / job.run_id, job.spec, reason)

    def _executor(self) -> Executor:
        config = self.suite.file.executor
        if config.kind == "slurm":
            return SlurmExecutor(config, self.runs.parent / "slurm")
        return LocalExecutor(len(self.slots))
