"""Planning a suite's run, once: the ``Plan`` of which jobs (``--only``, ``--smoke``), on
which slots, with how many cores each (their cohorts); whether their inputs exist (data
sets, teacher checkpoints, hyperparameters that fit the class count); the suite folder's
manifest."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import store
from ..engine import EngineOptions, cohort_key, usable_cores
from ..method import METHODS
from ..errors import ConfigError, DataError
from ..spec import RunSpec
from ..suite import Job, Suite
from .executors import Slot, make_slots

SMOKE_SAMPLES = 128  # per split: a smoke run checks that everything runs, not what it learns


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
    dependency chain (teachers 0, their students 1, ...). The scheduler starts a wave's
    cohorts in this order, ``slots`` at a time: the cohorts of its full rounds share the
    cores ``slots`` ways, the last ``n mod slots`` cohorts of a wave of n (which start as the
    last round) share them among themselves, so three seeds' cohorts on two slots do not
    leave a core idle while the third trains; and every job splits its share among its own
    processes. Dividing by the jobs running at the moment would use the cores at every
    instant, but the threads a job computes with change its float sums (oneDNN and ATen
    split reductions by thread), so a rerun, a resume or a run on a busier moment would
    give another record; the suite's graph gives every run the same share each time (on
    this machine and with these workers). The price: while a round's cohorts of unequal
    length finish, the cores of the shorter ones idle."""
    by_id = {j.run_id: j for j in jobs}
    depths: dict[str, int] = {}

    def depth(job: Job) -> int:
        if job.run_id not in depths:
            depths[job.run_id] = 1 + max((depth(by_id[d]) for d in job.depends_on if d in by_id), default=-1)
        return depths[job.run_id]

    units = form_cohorts(jobs, cohort_size)
    waves = [max(depth(job) for job in unit) for unit in units]
    width = {wave: waves.count(wave) for wave in waves}
    cores_of: dict[str, int] = {}
    for index, (unit, wave) in enumerate(zip(units, waves)):
        place = waves[:index].count(wave)  # the unit's place within its wave
        in_full_rounds = width[wave] - width[wave] % slots
        beside = slots if place < in_full_rounds else width[wave] - in_full_rounds
        cores_of.update({job.run_id: max(1, cores // (beside * processes_per_job)) for job in unit})
    return cores_of


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


@dataclass(frozen=True)
class Plan:
    """A suite's run as decided once, from the validated suite and the command line, and
    read whole by the runner, the scheduler, the dry run and the cost estimate.

    The slots and the cores are decided when first asked for, by a run: a dry run or an
    estimate looks at no device."""

    suite: Suite
    options: RunnerOptions
    directory: Path  # the suite's results folder
    everything: list[Job]  # the whole suite's jobs (``--smoke`` applied): the manifest lists them
    jobs: list[Job]  # those selected (``--only``), with the teachers they need
    engine: EngineOptions  # what every job's options start from: the data root and the subset resolved

    @property
    def runs(self) -> Path:
        return self.directory / store.RUNS

    @cached_property
    def finished_elsewhere(self) -> dict[str, Path]:
        """The selected runs that another suite under the same results root has finished and
        this one has not started: run id → that run's folder (``store.finished_in_other_suites``),
        which a run takes instead of training them."""
        return store.finished_in_other_suites(self.directory, [job.run_id for job in self.jobs])

    @cached_property
    def slots(self) -> list[Slot]:
        """Where jobs run side by side: the machine's devices, or on Slurm one per queued job."""
        executor = self.suite.file.executor
        workers = self.options.workers or executor.workers
        if executor.kind == "slurm":  # devices are the nodes' business; Slurm queues the jobs
            return [(self.engine.device,)] * (workers or len(self.jobs))
        return make_slots(self.engine.device, workers, executor.processes_per_job)

    @cached_property
    def cores(self) -> dict[str, int]:
        """Per run id, the cores its job may use (``core_plan``), planned on the whole suite
        so that a rerun, a resume or --only gives a run the same share; on Slurm none (a job
        has the cores it asks for)."""
        executor = self.suite.file.executor
        if executor.kind == "slurm":
            return {}
        return core_plan(self.everything, len(self.slots), usable_cores(), executor.cohort_size,
                         executor.processes_per_job)


def plan_suite(suite: Suite, options: RunnerOptions) -> Plan:
    """The plan of running ``suite`` with ``options``; raises ConfigError for an ``--only``
    that selects nothing."""
    everything = _smoke_jobs(suite.jobs) if options.smoke else suite.jobs
    engine = replace(options.engine, data_root=options.engine.data_root or suite.file.data_root,
                     subset=SMOKE_SAMPLES if options.smoke else options.engine.subset)
    directory = Path(options.out) / (f"{suite.name}-smoke" if options.smoke else suite.name)
    return Plan(suite, options, directory, everything, _only(suite, everything, options.only), engine)


def select_jobs(suite: Suite, options: RunnerOptions) -> list[Job]:
    """The suite's jobs after ``--only`` filters and ``--smoke``, plus the teachers they need: the plan's."""
    return plan_suite(suite, options).jobs


def _smoke_jobs(jobs: list[Job]) -> list[Job]:
    """``jobs`` trained for an epoch, each student bound to its smoke teacher."""
    smoke = [replace(j, spec=_smoke(j.spec)) for j in jobs]
    ids = {old.run_id: new.run_id for old, new in zip(jobs, smoke)}
    return [replace(j, spec=_rebind_teacher(j.spec, ids), depends_on=tuple(ids[d] for d in j.depends_on))
            for j in smoke]


def _only(suite: Suite, jobs: list[Job], only: dict[str, str]) -> list[Job]:
    """The ``jobs`` that ``--only``'s filters keep, plus the teachers they need."""
    if not only:
        return jobs
    for key, value in only.items():
        values = sorted({_value(j, key) for j in jobs if not j.is_teacher})
        if value not in values:
            raise ConfigError(f"--only {key}={value} matches no run of suite {suite.path}; its {key} values are "
                              f"{', '.join(values)}")
    wanted = [j for j in jobs if j.is_teacher or all(_value(j, k) == v for k, v in only.items())]
    if all(j.is_teacher for j in wanted):
        raise ConfigError(f"--only {' '.join(f'{k}={v}' for k, v in only.items())}: no run of suite "
                          f"{suite.path} has all of these; drop one (kdbench run --dry-run lists the runs)")
    needed = {d for j in wanted if not j.is_teacher for d in j.depends_on}
    return [j for j in wanted if not j.is_teacher or j.run_id in needed]


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
    store.write_manifest(directory, store.Manifest(
        suite=suite.name,
        description=suite.file.description,
        source=str(suite.path),
        selection=suite.file.selection,
        teacher_weights=suite.file.teacher_weights,
        paper=suite.file.paper_values,
        sources=suite.file.sources,
        paper_sources=suite.file.paper_sources,
        protocol_notes=suite.file.protocol_notes,
        release_differences={method: list(METHODS.get(method).release_differences)
                             for method in sorted({j.spec.method for j in jobs})},
        reference=suite.reference,
        controls=suite.controls,
        jobs=[store.ManifestJob(run_id=j.run_id, label=j.label, pair=j.pair,
                                role="teacher" if j.is_teacher else "student", dataset=j.spec.dataset.name,
                                seed=j.spec.seed, depends_on=list(j.depends_on)) for j in jobs],
    ))


def check_data(jobs: Iterable[Job], data_root: str | None) -> tuple[dict[str, int], list[str]]:
    """The class count of each data set (by name), and one message per set that cannot be opened."""
    from ..data import create_dataset

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
    from ..method import create_method
    from ..suite import suite_error

    problems: dict[tuple[str, str], str] = {}
    for job in jobs:
        name, key = job.spec.dataset.name, (job.label, job.spec.dataset.name)
        if job.is_teacher or name not in classes or key in problems:
            continue
        try:
            create_method(job.spec.method, **job.spec.hparams).check_classes(classes[name])
        except ConfigError as exc:
            problems[key] = str(suite_error(suite, ["methods", job.label], f"on {name} ({classes[name]} classes): {exc}"))
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
            return f"{suite.path}{suite.lines.key(['pairs', index, 'teacher_checkpoint'])}: 'pairs.{index}.teacher_checkpoint': "
    return ""
