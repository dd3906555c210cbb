"""Executes a suite's job graph: teachers before the students that need them, on every GPU
of the machine (one job each), a bounded pool of CPU processes, or Slurm via submitit.

Safe to kill at any moment and to run twice at once on the same results folder:
- a finished run has ``record.json`` and is never redone;
- a run in progress holds an exclusive ``flock`` on ``runs/<id>.lock`` (released by the
  kernel when its process dies, even by SIGKILL), so a second runner skips it and waits;
- an interrupted run resumes from its last epoch checkpoint;
- a failed run writes ``failed.json`` with its reason and is not retried unless asked
  (``--retry-failed``); its students fail with "teacher failed"; the rest go on;
- a ``record.json`` or ``failed.json`` that is corrupt is set aside (renamed, kept) and
  its run done again; a failure of the machine (full disk, I/O error, a device it lacks)
  is not booked as the run's: it stops the suite, and a plain rerun retries;
- SIGINT and SIGTERM stop the worker processes at once (their runs resume from their
  last epochs); workers ignore SIGINT themselves, so a Ctrl-C reaches only the runner.
  Slurm jobs are ``submitit.helpers.Checkpointable``: preempted or timed out, submitit
  requeues them and their runs resume from their last epochs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol
from unittest.mock import patch

from . import distributed, records
from .checkpoints import set_aside
from .errors import ConfigError, DataError, MachineError, RunStopped
from .progress import Running, TimeLeft, Work, duration
from .results import MANIFEST, RUNS, legacy_message, legacy_runs, load_manifest
from .runs import (FAILED, CohortOutOfMemory, CorruptResultsFile, as_machine_error, ensure_runs, finished_record,
                   read_run_file, set_aside_unsound_weights)
from .spec import RunSpec
from .suite import Job, Suite
from .engine import EngineOptions, cohort_key, resolve_device

POLL_SECONDS = 1.0
REPORT_SECONDS = 10.0  # between progress reports
SMOKE_SAMPLES = 128  # per split: a smoke run checks that everything runs, not what it learns


class Handle(Protocol):
    """What both a concurrent.futures Future and a submitit Job offer."""

    def done(self) -> bool: ...

    def result(self) -> Any: ...


@dataclass
class FirstTask:
    """A submitit job answering with its first task's result (every task of a
    data-parallel job returns the first one's answer)."""

    job: Any

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> Any:
        return self.job.results()[0]


def execute_cohort(spec_jsons: list[dict[str, Any]], runs_dir: str, options: EngineOptions,
                   method_files: list[str]) -> dict[str, dict[str, str]]:
    """Train runs together in this process, each under its own lock. Returns, per run id,
    {"status", "reason"}: finished, failed, busy (another process holds its lock),
    skipped (finished meanwhile by another process), split (the cohort ran out of
    device memory: train it in smaller ones), machine (the machine failed, not the run)
    or stopped (``options.on_epoch`` stopped it: ``RunStopped``, kept to resume).

    As one of several processes of a data-parallel job (``launch_cohort``, or a Slurm job
    with several tasks) it joins the others; the first takes the locks and decides."""
    import torch

    from .method import load_method_files

    _join_slurm_tasks()
    if method_files:
        load_method_files(*method_files)
    if options.threads:
        torch.set_num_threads(options.threads)
    if distributed.launched():
        distributed.setup(resolve_device(options.device))
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, dict[str, str]] = {}
    with contextlib.ExitStack() as locks:
        todo = []
        for spec in (RunSpec(**s) for s in spec_jsons) if distributed.is_main() else ():
            lock = locks.enter_context(open(runs / f"{spec.run_id}.lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                outcome[spec.run_id] = {"status": "busy", "reason": "running in another kdbench process"}
                continue
            if finished_record(runs, spec.run_id) is not None:  # a corrupt one is set aside
                outcome[spec.run_id] = {"status": "skipped", "reason": "finished by another kdbench process"}
            elif (runs / spec.run_id / FAILED).exists():  # the scheduler cleared it before starting
                error = read_run_file(runs / spec.run_id / FAILED)["error"]
                outcome[spec.run_id] = {"status": "failed", "reason": f"in another kdbench process: {error}"}
            else:
                todo.append(spec)
        outcome, todo = distributed.broadcast_object((outcome, todo))
        for spec, result in zip(todo, ensure_runs(todo, runs, options)):
            status = ("split" if isinstance(result, CohortOutOfMemory) else
                      "machine" if isinstance(result, MachineError) else
                      "stopped" if isinstance(result, RunStopped) else
                      "failed" if isinstance(result, BaseException) else "finished")
            outcome[spec.run_id] = {"status": status,
                                    "reason": f"{type(result).__name__}: {result}" if status != "finished" else ""}
    if torch.cuda.is_initialized():
        gc.collect()  # a failed run's error holds its frames, and through them its tensors
        torch.cuda.empty_cache()  # the next job on this GPU may run in another worker process
    return outcome


def launch_cohort(devices: tuple[str, ...], spec_jsons: list[dict[str, Any]], runs_dir: str, options: EngineOptions,
                  method_files: list[str]) -> dict[str, dict[str, str]]:
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


def form_cohorts(jobs: list[Job], size: int) -> list[tuple[Job, ...]]:
    """Jobs that can train together (``engine.cohort_key``, one teacher between them),
    in chunks of at most ``size``. Runs without a teacher ride along with a teacher's
    group, unless other runs wait for them (teachers train before their students)."""
    depended = {d for job in jobs for d in job.depends_on}
    groups: dict[tuple[str, Any], list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.spec.teacher is None):
        key = cohort_key(job.spec)
        teacher = job.spec.teacher
        if teacher is None and job.run_id not in depended:
            teacher = next((t for k, t in groups if k == key and t is not None), None)
        groups.setdefault((key, teacher), []).append(job)
    return [tuple(group[i:i + size]) for group in groups.values() for i in range(0, len(group), size)]


MAX_LOADER_WORKERS = 8  # a GPU job's data-loader processes, at most (as engine.train_cohort's default)


def core_plan(jobs: list[Job], slots: int, cores: int, cohort_size: int, processes_per_job: int = 1) -> dict[str, int]:
    """Per run id, the cores its job may use: the machine's cores shared among the jobs
    the suite's graph lets run beside it, so that a teacher every other job waits for
    gets them all, and students that run side by side share them.

    The jobs are the suite's cohorts (``form_cohorts``), each in the wave of its deepest
    dependency chain (teachers 0, their students 1, ...); a job of a wave of n cohorts
    shares the cores with min(n, slots) jobs, and with its own processes. Dividing by the
    jobs running at the moment would use the cores at every instant, but the threads a
    job computes with change its float sums (oneDNN and ATen split reductions by thread),
    so a rerun, a resume or a run on a busier moment would give another record; the
    suite's graph gives every run the same share each time (on this machine and with
    these workers). The price: while a wave's last cohorts finish, the cores of the others
    idle."""
    by_id = {j.run_id: j for j in jobs}
    depths: dict[str, int] = {}

    def depth(job: Job) -> int:
        if job.run_id not in depths:
            depths[job.run_id] = 1 + max((depth(by_id[d]) for d in job.depends_on if d in by_id), default=-1)
        return depths[job.run_id]

    units = form_cohorts(jobs, cohort_size)
    waves = [max(depth(job) for job in unit) for unit in units]
    width = {wave: waves.count(wave) for wave in waves}
    return {job.run_id: max(1, cores // (min(width[wave], slots) * processes_per_job))
            for unit, wave in zip(units, waves) for job in unit}


@dataclass
class RunnerOptions:
    out: Path = Path("results")
    dry_run: bool = False
    smoke: bool = False
    only: dict[str, str] = field(default_factory=dict)
    retry_failed: bool = False
    workers: int | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    printer: Callable[[str], None] = print


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # finished before this call, or by another runner
    missing: list[str] = field(default_factory=list)  # inputs a dry run found missing (a run raises DataError)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing


def suite_dir(suite: Suite, options: RunnerOptions) -> Path:
    return Path(options.out) / (f"{suite.name}-smoke" if options.smoke else suite.name)


def select_jobs(suite: Suite, options: RunnerOptions) -> list[Job]:
    """The suite's jobs after ``--only`` filters and ``--smoke``, plus the teachers they need."""
    jobs = suite.jobs
    if options.smoke:
        jobs = [replace(j, spec=_smoke(j.spec)) for j in jobs]
        ids = {old.run_id: new.run_id for old, new in zip(suite.jobs, jobs)}
        jobs = [replace(j, spec=_rebind_teacher(j.spec, ids), depends_on=tuple(ids[d] for d in j.depends_on)) for j in jobs]
    if options.only:
        for key, value in options.only.items():
            values = sorted({_value(j, key) for j in jobs if not j.is_teacher})
            if value not in values:
                raise ConfigError(f"--only {key}={value} matches no run of suite {suite.path}; its {key} values are "
                                  f"{', '.join(values)}")
        wanted = [j for j in jobs if j.is_teacher or all(_value(j, k) == v for k, v in options.only.items())]
        if all(j.is_teacher for j in wanted):
            raise ConfigError(f"--only {' '.join(f'{k}={v}' for k, v in options.only.items())}: no run of suite "
                              f"{suite.path} has all of these; drop one (kdbench run --dry-run lists the runs)")
        needed = {d for j in wanted if not j.is_teacher for d in j.depends_on}
        jobs = [j for j in wanted if not j.is_teacher or j.run_id in needed]
    return jobs


def _smoke(spec: RunSpec) -> RunSpec:
    return spec.replace(recipe=spec.recipe.model_copy(update={"epochs": 1, "warmup_epochs": 0}))


def _rebind_teacher(spec: RunSpec, ids: dict[str, str]) -> RunSpec:
    if spec.teacher is None or spec.teacher.run_id is None:
        return spec
    return spec.replace(teacher=spec.teacher.model_copy(update={"run_id": ids[spec.teacher.run_id]}))


ONLY_KEYS = ("dataset", "method", "student", "teacher", "seed", "pair")


def _value(job: Job, key: str) -> str:
    """The job's value of an ``--only`` key."""
    spec = job.spec
    actual = {
        "dataset": spec.dataset.name,
        "method": job.label,
        "student": spec.student,
        "teacher": spec.teacher.model if spec.teacher else "",
        "seed": str(spec.seed),
        "pair": job.pair,
    }[key]
    return actual


def write_manifest(suite: Suite, jobs: list[Job], directory: Path) -> None:
    """The suite's manifest, listing ``jobs`` and those the manifest already there lists
    (a changed suite, a smaller selection): a report never loses runs it saw before."""
    try:
        listed = {job["run_id"]: job for job in load_manifest(directory)["jobs"]}
    except CorruptResultsFile as exc:
        set_aside(exc.path, str(exc))
        listed = {}
    listed.update({j.run_id: {"run_id": j.run_id, "label": j.label, "pair": j.pair,
                              "role": "teacher" if j.is_teacher else "student", "dataset": j.spec.dataset.name,
                              "seed": j.spec.seed, "depends_on": list(j.depends_on)} for j in jobs})
    records.write_json(directory / MANIFEST, {
        "suite": suite.name,
        "source": str(suite.path),
        "selection": suite.file.selection,
        "paper": suite.file.paper,
        "reference": suite.reference,
        "controls": suite.controls,
        "jobs": list(listed.values()),
    })


def check_data(jobs: Iterable[Job], data_root: str | None) -> tuple[dict[str, int], list[str]]:
    """The class count of each data set (by name), and one message per set that cannot be opened."""
    from .data import create_dataset

    classes: dict[str, int] = {}
    problems: dict[str, str] = {}
    for spec in {j.spec.dataset.model_dump_json(): j.spec for j in jobs}.values():
        if spec.dataset.name in problems:
            continue
        try:
            data = create_dataset(spec.dataset.name, data_root, val_fraction=spec.dataset.val_fraction, **spec.dataset.options)
        except DataError as exc:
            problems[spec.dataset.name] = str(exc) if str(exc).startswith(spec.dataset.name) else f"{spec.dataset.name}: {exc}"
        else:
            classes[spec.dataset.name] = data.num_classes
    return classes, list(problems.values())


def check_methods(jobs: Iterable[Job], classes: dict[str, int], suite: Suite) -> list[str]:
    """One message per method label whose hyperparameters cannot work with its data set's
    class count (``Method.check_classes``), naming the suite file, key and line."""
    from .method import create_method
    from .suite import suite_error

    problems: dict[tuple[str, str], str] = {}
    text = suite.path.read_text()
    for job in jobs:
        name, key = job.spec.dataset.name, (job.label, job.spec.dataset.name)
        if job.is_teacher or name not in classes or key in problems:
            continue
        try:
            create_method(job.spec.method, **job.spec.hparams).check_classes(classes[name])
        except ConfigError as exc:
            problems[key] = str(suite_error(suite, text, ["methods", job.label], f"on {name} ({classes[name]} classes): {exc}"))
    return list(problems.values())


def check_teachers(jobs: Iterable[Job], suite: Suite | None = None) -> list[str]:
    """One message per teacher checkpoint file that does not exist, naming the suite's
    ``pairs.N.teacher_checkpoint`` and its line when ``suite`` is given."""
    missing = {}
    for job in jobs:
        teacher = job.spec.teacher
        if teacher is not None and teacher.checkpoint and not Path(teacher.checkpoint).is_file():
            unset = re.findall(r"\$\{?([A-Za-z_]\w*)", teacher.checkpoint)  # expandvars leaves unset ones as they are
            fix = (f"its path names ${unset[0]}, which is not set here: export {unset[0]}=<folder> first" if unset
                   else "fix teacher_checkpoint, or set the variables its path names (e.g. KDBENCH_CHECKPOINTS)")
            missing[teacher.checkpoint] = (f"{_pair_key(suite, teacher.model, teacher.checkpoint)}teacher "
                                           f"{teacher.model}: checkpoint {teacher.checkpoint} does not exist; {fix}")
    return list(missing.values())


def _pair_key(suite: Suite | None, model: str, checkpoint: str) -> str:
    """'<suite file> (line N): 'pairs.i.teacher_checkpoint': ' of the pair naming this
    teacher checkpoint (matched by model and file name), or ''."""
    pairs = suite.file.pairs if suite is not None else []
    for index, pair in enumerate(pairs):
        raw = pair.teacher_checkpoint
        if pair.teacher == model and raw and Path(os.path.expandvars(raw)).name == Path(checkpoint).name:
            text = suite.path.read_text()
            line = f" (line {text.count(chr(10), 0, text.find(raw)) + 1})" if raw in text else ""
            return f"{suite.path}{line}: 'pairs.{index}.teacher_checkpoint': "
    return ""


def status_of(runs: Path, run_id: str) -> str:
    """done, failed, partial (a checkpoint to resume), todo, or corrupt (a record.json or
    failed.json that is not what kdbench writes: the scheduler sets it aside and redoes the run)."""
    if corrupt_run_files(runs / run_id):
        return "corrupt"
    if (runs / run_id / records.RECORD).exists():
        return "done"
    if (runs / run_id / FAILED).exists():
        return "failed"
    if (runs / run_id / records.CHECKPOINT).exists():
        return "partial"
    return "todo"


def corrupt_run_files(run_dir: Path) -> list[CorruptResultsFile]:
    """What is wrong with the run's record.json and failed.json, if either is corrupt."""
    problems = []
    for path in (run_dir / records.RECORD, run_dir / FAILED):
        try:
            if path.exists():
                read_run_file(path)
        except CorruptResultsFile as exc:
            problems.append(exc)
    return problems


def run_suite(suite: Suite, options: RunnerOptions) -> Outcome:
    say = options.printer
    directory = suite_dir(suite, options)
    runs = directory / RUNS
    legacy = legacy_runs(directory)
    if legacy:
        raise ConfigError(f"nothing was trained: {legacy_message(directory, legacy)}")
    jobs = select_jobs(suite, options)
    engine = replace(options.engine, data_root=options.engine.data_root or suite.file.data_root,
                     subset=SMOKE_SAMPLES if options.smoke else options.engine.subset)
    classes, problems = check_data(jobs, engine.data_root)
    problems += check_teachers(jobs, suite)
    invalid = check_methods(jobs, classes, suite)
    if invalid:
        raise ConfigError("nothing was trained:\n  " + "\n  ".join(invalid))
    if options.dry_run:
        counts: dict[str, int] = {}
        for job in jobs:
            status = status_of(runs, job.run_id)
            counts[status] = counts.get(status, 0) + 1
            say(f"{status:<8} {job.run_id}  {job.describe()}")
        say(f"{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" (results in {directory})")
        for problem in problems:
            say(f"missing: {problem}")
        return Outcome(missing=problems)
    if problems:
        raise DataError("cannot run, inputs are missing:\n  " + "\n  ".join(problems))
    if suite.file.executor.kind != "slurm":  # the nodes' devices are not the login node's
        resolve_device(engine.device)
    runs.mkdir(parents=True, exist_ok=True)
    # the whole suite's jobs, merged with those listed before: --only never hides runs from a report
    write_manifest(suite, select_jobs(suite, replace(options, only={})), directory)
    return Scheduler(suite, jobs, runs, engine, options).run()


class Scheduler:
    def __init__(self, suite: Suite, jobs: list[Job], runs: Path, engine: EngineOptions, options: RunnerOptions) -> None:
        self.suite, self.jobs, self.runs, self.engine, self.options = suite, jobs, runs, engine, options
        self.say = options.printer
        self.by_id = {j.run_id: j for j in jobs}
        self.outcome = Outcome()
        executor = suite.file.executor
        workers = options.workers or executor.workers
        self.cores: dict[str, int] = {}  # per run id: the cores its job may use (``core_plan``)
        if executor.kind == "slurm":  # devices are the nodes' business; Slurm queues the jobs
            self.slots = [(engine.device,)] * (workers or len(jobs))
        else:
            self.slots = _slots(engine.device, workers, executor.processes_per_job)
            # planned on the whole suite, so that a rerun, a resume or --only gives a run the same share
            everything = select_jobs(suite, replace(options, only={}))
            self.cores = core_plan(everything, len(self.slots), os.cpu_count() or 1, executor.cohort_size,
                                   executor.processes_per_job)
        self.started = time.time()
        self.time_left = TimeLeft(slots=len(self.slots))
        self.begun: dict[int, tuple[float, int]] = {}  # per running cohort: when it started, epochs done before
        self.first_epoch: dict[int, float | None] = {}  # per running cohort: when its first epoch ended
        self.estimates: list[tuple[float, float | None]] = []  # (seconds since the start, estimated seconds left)

    def run(self) -> Outcome:
        pending: list[Job] = []
        teachers = {d for job in self.jobs for d in job.depends_on}
        for job in self.jobs:
            status = status_of(self.runs, job.run_id)
            if status == "corrupt":
                for corrupt in corrupt_run_files(self.runs / job.run_id):
                    set_aside(corrupt.path, str(corrupt))
                status = status_of(self.runs, job.run_id)
            if status == "done" and job.run_id in teachers and set_aside_unsound_weights(self.runs / job.run_id):
                status = status_of(self.runs, job.run_id)  # its students need its weights: it trains again
            if status == "done":
                self.outcome.skipped.append(job.run_id)
            elif status == "failed" and not self.options.retry_failed:
                self.outcome.failed[job.run_id] = read_run_file(self.runs / job.run_id / FAILED)["error"]
            else:
                if status == "failed":
                    (self.runs / job.run_id / FAILED).unlink()
                pending.append(job)
        if not pending:
            self.say(f"[{self.suite.name}] nothing to do: {len(self.outcome.skipped)} runs already finished"
                     + (f", {len(self.outcome.failed)} failed (--retry-failed reruns them)" if self.outcome.failed else ""))
            return self.outcome
        units = form_cohorts(pending, self.suite.file.executor.cohort_size)
        self.say(f"[{self.suite.name}] {len(pending)} runs to do ({len(self.outcome.skipped)} already finished) "
                 f"in {len(units)} cohort(s) on {len(self.slots)} worker(s): {', '.join('+'.join(s) for s in self.slots)}")
        submit, close = self._executor()
        running: list[tuple[Handle, Slot, tuple[Job, ...]]] = []
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
                        options = self._job_options(slot, ready)
                        handle = submit(slot, [j.spec.model_dump(mode="json") for j in ready],
                                        str(self.runs), options, [str(p) for p in self.suite.method_files()])
                        running.append((handle, slot, ready))
                        self.begun[id(ready)] = (time.time(), _epochs_done(self.runs, ready))
                        self.first_epoch.pop(id(ready), None)
                    elif ready:
                        units.append(ready)
                self._note_first_epochs(running)
                for entry in [e for e in running if e[0].done()]:
                    running.remove(entry)
                    handle, slot, unit = entry
                    free.append(slot)
                    self.time_left.observe(self._progress(unit, finished=True))
                    units.extend(self._finish(unit, handle))
                if time.time() - last_report > REPORT_SECONDS or not (units or running):
                    self._report(units, running)
                    last_report = time.time()
                if running or units:
                    time.sleep(POLL_SECONDS)
            stopped = False
        finally:
            close(stopped)
        return self.outcome

    def _job_options(self, slot: Slot, unit: tuple[Job, ...]) -> EngineOptions:
        """The engine options of a job: on CPUs its intra-op threads, on GPUs its data-loader
        processes (unless --workers names them), from the job's share of the cores."""
        options = replace(self.engine, progress=False)
        share = min((self.cores[j.run_id] for j in unit if j.run_id in self.cores), default=None)
        if share is None:  # Slurm: the nodes' cores are the nodes' business
            return options
        if slot[0] == "cpu":
            return replace(options, threads=share)
        if slot[0].startswith("cuda") and options.workers is None:
            return replace(options, workers=min(MAX_LOADER_WORKERS, share))
        return options

    def _ready(self, unit: tuple[Job, ...]) -> tuple[Job, ...] | None:
        """The unit's jobs that can start now (after failing those whose teacher failed),
        or None while some of them still wait for a teacher."""
        ready = []
        for job in unit:
            blocked = self._blocked(job)
            if blocked == "":
                return None
            if blocked:
                self._record_failure(job, blocked)
            else:
                ready.append(job)
        return tuple(ready)

    def _blocked(self, job: Job) -> str | None:
        """None when the job can start, '' while it waits, else why it can never run."""
        for dependency in job.depends_on:
            status = status_of(self.runs, dependency)
            if status == "done":
                continue
            if status == "failed" or dependency in self.outcome.failed:
                return f"teacher run {dependency} failed"
            return ""
        return None

    def _finish(self, unit: tuple[Job, ...], handle: Handle) -> list[tuple[Job, ...]]:
        """Book a finished cohort's results; returns the units still to run: jobs that wait
        for another runner, and the halves of a cohort that did not fit in memory."""
        try:
            results = handle.result()
        except Exception as exc:  # the worker process itself died
            if isinstance(as_machine_error(exc), MachineError):
                raise as_machine_error(exc) from exc
            reason = f"worker died: {type(exc).__name__}: {exc}"
            results = {j.run_id: {"status": "failed", "reason": reason} for j in unit}
        elsewhere, split = [], []
        for job in unit:
            result = results[job.run_id]
            if result["status"] == "machine":
                raise MachineError(f"[{self.suite.name}] stopped at {job.describe()}: {result['reason']}; the runs "
                                   "finished so far are kept, the others resume from their last epochs")
            if result["status"] == "busy":
                elsewhere.append(job)
            elif result["status"] == "split":
                split.append(job)
            elif result["status"] == "skipped":
                self.outcome.skipped.append(job.run_id)
            elif result["status"] == "finished":
                self.outcome.finished.append(job.run_id)
            else:
                self.outcome.failed[job.run_id] = result["reason"]
                if not (self.runs / job.run_id / FAILED).exists():
                    self._record_failure(job, result["reason"])
                self.say(f"FAILED {job.describe()}: {result['reason']}")
        if split:
            half = (len(split) + 1) // 2
            self.say(f"[{self.suite.name}] a cohort of {len(split)} runs ran out of device memory; "
                     f"it goes on as cohorts of {half} and {len(split) - half}, from the runs' last epochs")
            return [u for u in (tuple(elsewhere), tuple(split[:half]), tuple(split[half:])) if u]
        return [tuple(elsewhere)] if elsewhere else []

    def _record_failure(self, job: Job, reason: str) -> None:
        self.outcome.failed[job.run_id] = reason
        records.write_json(self.runs / job.run_id / FAILED, {
            "run_id": job.run_id, "status": "failed", "spec": job.spec.model_dump(mode="json"), "error": reason,
        })

    def _report(self, units: list[tuple[Job, ...]], running: list[tuple[Handle, Slot, tuple[Job, ...]]]) -> None:
        done = len(self.outcome.finished) + len(self.outcome.skipped)
        left = sum(len(u) for u in units)
        active = [job for _, _, unit in running for job in unit]
        eta = ""
        if left or active:
            progress = [self._progress(unit) for _, _, unit in running]
            for job in progress:
                self.time_left.observe(job)
            seconds = self.time_left.estimate(progress, [self._work(unit) for unit in units])
            self.estimates.append((time.time() - self.started, seconds))
            eta = f", about {duration(seconds)} left" if seconds is not None else ", estimating…"
        lines = [f"[{self.suite.name}] {done}/{len(self.jobs)} done, {len(active)} running, "
                 f"{len(self.outcome.failed)} failed, {left} waiting{eta}"]
        for job in active:
            rows = records.read_metrics(self.runs / job.run_id)
            state = (f"epoch {rows[-1]['epoch']}/{job.spec.recipe.epochs} val {rows[-1]['val_top1']:.1f}"
                     if rows else "starting")
            lines.append(f"    {job.describe()} {state}")
        self.say("\n".join(lines))

    def _note_first_epochs(self, running: list[tuple[Handle, Slot, tuple[Job, ...]]]) -> None:
        """When each running cohort's first epoch ended: its metrics files' time while they
        hold that one epoch (polled every second; None if a second one came first)."""
        for _, _, unit in running:
            if id(unit) in self.first_epoch:
                continue
            started, before = self.begun[id(unit)]
            rows = [len(records.read_metrics(self.runs / job.run_id)) for job in unit]
            if min(rows) > before:
                self.first_epoch[id(unit)] = (max((self.runs / job.run_id / records.METRICS).stat().st_mtime
                                                  for job in unit) - started) if max(rows) == before + 1 else None

    def _work(self, unit: tuple[Job, ...]) -> Work:
        """The cohort as the time estimate sees it; its family: role, data, batch and models;
        its kind: those and its labels (the same cohort in every seed)."""
        spec = unit[0].spec
        dataset = spec.dataset.model_dump_json()
        models = sorted({(j.spec.student, j.spec.teacher.model if j.spec.teacher else "") for j in unit})
        family = f"{'teacher' if unit[0].is_teacher else 'students'} {dataset} batch {spec.recipe.batch_size} {models}"
        kind = f"{family} {sorted(j.label for j in unit)}"
        teacher = next((j.spec.teacher.model for j in unit if j.spec.teacher), None)
        cost = (_parameters(teacher) if teacher else 0) + 3 * sum(_parameters(j.spec.student) for j in unit)
        return Work(key=unit[0].run_id, kind=kind, family=family, dataset=dataset, cost=cost, epochs=spec.recipe.epochs,
                    depends_on=frozenset(d for j in unit for d in j.depends_on),
                    produces=frozenset(j.run_id for j in unit))

    def _progress(self, unit: tuple[Job, ...], finished: bool = False) -> Running:
        """How far a started cohort got, from its runs' metrics.jsonl (its epochs end when
        the slowest run's row is written)."""
        started, before = self.begun[id(unit)]
        now = time.time()
        rows = [records.read_metrics(self.runs / job.run_id) for job in unit]
        epochs = min(len(r) for r in rows)
        # its last epoch ended with its slowest run's row: a run already a row ahead wrote its file later
        last = max(((self.runs / job.run_id / records.METRICS).stat().st_mtime for job, r in zip(unit, rows)
                    if r and len(r) == epochs), default=started)
        latest = next((r[-1] for r in rows if r and r[-1].get("images_per_s")), None)
        return Running(self._work(unit), elapsed=now - started, epochs_done=max(0, epochs - before),
                       epochs_before=before, last_epoch_at=last - started, finished=finished,
                       first_epoch_at=self.first_epoch.get(id(unit)),
                       train_seconds=(sum(r[epochs - 1].get("epoch_seconds") or 0.0 for r in rows)
                                      if epochs > before else None),
                       samples_per_epoch=latest["images_per_s"] * latest["epoch_seconds"] if latest else None)

    def _executor(self) -> tuple[Callable[..., Handle], Callable[[], None]]:
        """A function submitting (slot, *execute_cohort's arguments), and one to close."""
        executor = self.suite.file.executor
        if executor.kind == "slurm":
            import submitit

            slurm = dict(executor.slurm)
            cluster = slurm.pop("cluster", None)  # "local" / "debug" run submitit without Slurm
            pool = submitit.AutoExecutor(folder=self.runs.parent / "slurm", cluster=cluster)
            tasks = {"tasks_per_node": executor.processes_per_job} if executor.processes_per_job > 1 else {}
            if slurm or tasks:
                pool.update_parameters(**{**tasks, **slurm})

            def submit_job(slot: Slot, specs: list[dict[str, Any]], runs: str, options: EngineOptions,
                           files: list[str]) -> Handle:
                return FirstTask(pool.submit(CohortJob(), specs, runs, replace(options, device=slot[0]), files))

            return submit_job, lambda stop: None  # Slurm jobs go on without the runner (a rerun waits on them)
        processes = ProcessPoolExecutor(max_workers=len(self.slots), mp_context=get_context("spawn"))

        def submit_local(*args: Any) -> Handle:
            # both inherited by the processes it starts: a Ctrl-C reaches only the runner
            with _sigint_ignored(), _passive_openmp():
                return processes.submit(launch_cohort, *args)

        def close(stop: bool) -> None:
            if stop:
                _stop_workers(processes)
            processes.shutdown(wait=not stop, cancel_futures=True)

        return submit_local, close


Slot = tuple[str, ...]  # the devices of one job, one process each


@functools.cache
def _parameters(model: str) -> int:
    """A model's parameter count (at 10 classes: the head barely matters), the time
    estimate's proxy for what a sample costs it."""
    from .models import create_model

    return sum(p.numel() for p in create_model(model, num_classes=10).parameters())


def _epochs_done(runs: Path, unit: tuple[Job, ...]) -> int:
    """Epochs every run of the cohort has finished (it resumes from there)."""
    return min(len(records.read_metrics(runs / job.run_id)) for job in unit)


class CohortJob:
    """``execute_cohort`` as a Slurm job that submitit requeues when Slurm preempts it or
    its time runs out: submitit calls ``checkpoint`` on its signal, which resubmits the
    same cohort; its runs then resume from their last epoch checkpoints (nothing else
    needs saving). This is ``submitit.helpers.Checkpointable``'s behaviour, without
    importing submitit where it is not used."""

    def __call__(self, *args: Any) -> dict[str, dict[str, str]]:
        return execute_cohort(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


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


def _passive_openmp() -> Any:
    """OMP_WAIT_POLICY=PASSIVE for the worker processes started in the block, unless set.
    OpenMP threads that spin while they wait for each other lose most of their time when
    the machine has more runnable processes than cores: under a load of 7 on 2 cores one
    epoch took 34-48 s on 2 threads against 5-11 s on 1; waiting passively, 4.5-4.8 s on
    2. How threads wait does not change what they compute: records stay the same."""
    return patch.dict(os.environ, {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})


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


def _slots(device: str, workers: int | None, processes: int) -> list[Slot]:
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
    return [("cpu",) * processes] * (workers or max(1, min(os.cpu_count() or 1, 8) // processes))
