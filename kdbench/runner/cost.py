"""What a suite will cost before it starts: device-hours per data set and pair, and in all.

The figures are measured on this machine, not guessed from parameter counts: for each
(data set, batch, precision) the suite trains at, a short timed run on this machine's device
(``engine.timing.interleaved``: a warm-up call, then rounds of calls filling ``ROUND_SECONDS``,
the median kept) of

- each teacher's forward pass without gradients (once per batch for a whole cohort:
  ``planning.form_cohorts``), with the stages its cohort's methods read tapped;
- one training step (forward, loss, backward, optimizer step: the engine's
  ``trainee_step``) of each student with one representative method of each family the
  suite uses on it (``family``: no teacher; logits (with the final feature map and the
  embedding every forward gives); intermediate features; two views), the family's first
  method in the suite;
- each student's evaluation forward (the val and test splits, every epoch),

on random tensors of the set's image size and class count. So the data sets and teacher
checkpoints need not be there: a set that cannot be opened is costed at its official sizes
(``OFFICIAL_TRAIN_TEST`` and ``OFFICIAL_CLASSES``). A cohort then costs, per epoch, its
steps (the training split over the batch size) times the teacher's forward plus its
students' steps, and its students' evaluation; once, its teacher's test evaluation and, for
a method that calibrates on them, the teacher's logits on the training split. Each run's
share is its own step and evaluation plus an equal part of what its cohort shares.

On a GPU each call is timed at the recipe's batch. On the CPU a batch is cut to at most
``CPU_PIXELS`` pixels per call (2 images at 224 px, 32 at 32 px) and its time scaled to the recipe's
batch: a CPU's time per image barely changes with the batch, and a 128-image step of a
ResNet-34 at 224 px takes tens of seconds there. Each call runs on one thread and its time
is divided by torch's thread count: the runner spreads a suite's jobs over the cores, and
on a busy machine two threads' short parallel regions wait on each other far longer than
a whole job does (docs/before-a-long-run.md has the figures). So on the CPU the figures
are those of the machine to itself. Not counted: process start, data loading
(the device-held set and prepared stores keep it off the critical path on GPUs; a PIL
loader at 224 px may not), checkpoint files, and other jobs sharing the device. Methods of
one family differ in cost (ReviewKD's step is several times FitNet's): ``kdbench bench``
(a) gives every method's step against KD's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from .. import store
from ..data import create_dataset
from ..data.prepared import OFFICIAL_COUNTS
from ..engine import EngineOptions, Execution, RngStream, TraineeSetup, make_trainee, resolve_device, usable_cores
from ..engine.batches import to_device
from ..engine.step import Autocast, trainee_step
from ..engine.timing import interleaved
from ..errors import DataError
from ..method import Batch, Method, TrainContext, create_method
from ..models import create_model
from ..spec import DataSpec, Recipe
from ..suite import Job
from .planning import Plan, form_cohorts

# (train, test) images and classes of the real sets, for costing one that is not on this machine
OFFICIAL_TRAIN_TEST: dict[str, tuple[int, int]] = {**OFFICIAL_COUNTS, "cifar100": (50000, 10000),
                                                   "tiny-imagenet": (100000, 10000)}
OFFICIAL_CLASSES: dict[str, int] = {"cub200": 200, "stanford-dogs": 120, "mit67": 67, "stanford40": 40,
                                    "fgvc-aircraft": 100, "flowers102": 102, "cifar100": 100, "tiny-imagenet": 200}
NATIVE_SIZE: dict[str, int] = {"cifar100": 32, "tiny-imagenet": 64}  # sets without an image_size option
CPU_PIXELS = 2**15  # on the CPU, a timed call holds at most this many pixels (see the module docstring)
ROUNDS = 2  # timing rounds per contender, after a warm-up call and a sizing call


def family(method: Method) -> str:
    """A method's cost family: what it makes the engine compute beyond a student's step."""
    needs = method.needs
    if not needs.teacher:
        return "no teacher"
    if needs.weak_view:
        return "two views"
    return "features" if needs.stages or needs.teacher_stages else "logits"


@dataclass(frozen=True)
class DataShape:
    """What the estimate needs of a data set: its images, classes and split sizes."""

    image_size: int
    num_classes: int
    train: int  # samples a run trains on per epoch (the official train split less the validation split)
    val: int
    test: int
    found: bool  # read from the set itself; False: its official sizes


def data_shape(spec: DataSpec, data_root: str | None, subset: int | None = None) -> DataShape | None:
    """The set's shape, read from the set when it opens (a prepared store is not made for
    it), else from its official sizes; None for a set that is absent and has none."""
    options = {**spec.options, "prepared": False} if "prepared" in spec.options else spec.options
    try:
        data = create_dataset(spec.name, data_root, val_fraction=spec.val_fraction, augment="none", **options)
    except DataError:
        if spec.name not in OFFICIAL_TRAIN_TEST:
            return None
        train, test = OFFICIAL_TRAIN_TEST[spec.name]
        val = round(train * spec.val_fraction)
        size = spec.options.get("image_size", NATIVE_SIZE.get(spec.name, 224))
        shape = DataShape(size, OFFICIAL_CLASSES[spec.name], train - val, val, test, found=False)
    else:
        shape = DataShape(data.input_size, data.num_classes, len(data.train), len(data.val), len(data.test), found=True)
    if subset is not None:
        shape = replace(shape, train=min(shape.train, subset), val=min(shape.val, subset), test=min(shape.test, subset))
    return shape


def measured_batch(batch_size: int, image_size: int, device: torch.device) -> int:
    """The images per timed call: the recipe's batch on a GPU, at most CPU_PIXELS on the CPU."""
    if device.type == "cuda":
        return batch_size
    return max(2, min(batch_size, CPU_PIXELS // image_size**2))


@dataclass
class Rates:
    """Seconds per image of each measured call, keyed as ``Group`` names them."""

    seconds: dict[tuple, float] = field(default_factory=dict)
    batch: dict[tuple, int] = field(default_factory=dict)  # images per timed call, per group key


@dataclass
class Group:
    """The calls timed together: one image size, batch and precision (data sets alike in
    these share their timings; the calls are timed at the largest class count and
    training set among them)."""

    key: tuple  # (image size, batch size, precision)
    datasets: list[str]
    shape: DataShape
    recipe: Recipe
    teachers: dict[str, set[str]] = field(default_factory=dict)  # teacher model → stages tapped
    steps: dict[tuple[str, str | None, str], Job] = field(default_factory=dict)  # (student, teacher, family) → job
    students: set[str] = field(default_factory=set)


def _group_key(job: Job, shape: DataShape) -> tuple:
    recipe = job.spec.recipe
    return shape.image_size, recipe.batch_size, recipe.precision


def _step_key(job: Job, method: Method) -> tuple[str, str | None, str]:
    teacher = job.spec.teacher.model if job.spec.teacher is not None and method.needs.teacher else None
    return job.spec.student, teacher, family(method)


def measure(groups: list[Group], device: torch.device, options: EngineOptions,
            say: Callable[[str], None] = lambda line: None) -> Rates:
    """Seconds per image of every teacher forward, student step and evaluation forward of
    ``groups``, timed on ``device`` (see the module docstring)."""
    rates = Rates()
    for group in groups:
        shape, n = group.shape, measured_batch(group.recipe.batch_size, group.shape.image_size, device)
        rates.batch[group.key] = n
        say(f"  timing {len(group.steps)} step(s) at {shape.image_size} px ({', '.join(group.datasets)}), {n} images "
            "per call …")
        execution = Execution.of(options, device, group.recipe.precision)
        autocast = execution.autocast
        torch.manual_seed(0)
        images = to_device(torch.randn(n, 3, shape.image_size, shape.image_size), execution)
        labels = torch.randint(shape.num_classes, (n,), device=device)
        batch = Batch(images, labels, torch.randint(max(shape.train, 1), (n,), device=device))
        two_views = replace(batch, weak_images=images.clone())
        teachers = {}
        for name, stages in group.teachers.items():
            teacher = create_model(name, num_classes=shape.num_classes).to(device).eval().requires_grad_(False)
            teacher.tap(sorted(stages))
            teachers[name] = execution.laid_out(teacher)
        context = partial(TrainContext, shape.num_classes, torch.randint(shape.num_classes, (max(shape.train, 1),)),
                          group.recipe.epochs, 0,
                          teacher_train_logits=torch.randn(max(shape.train, 1), shape.num_classes))
        contenders: dict[tuple, Callable[[], None]] = {}
        outputs = {}
        for name, teacher in teachers.items():
            with torch.no_grad(), autocast():
                outputs[name] = (teacher(batch.images), teacher(two_views.weak_images))
            contenders[(group.key, "forward", name)] = partial(_forward, teacher, batch.images, autocast)
        for key, job in group.steps.items():
            student, teacher_name, _ = key
            method = create_method(job.spec.method, **job.spec.hparams)
            teacher = teachers.get(teacher_name) if teacher_name else None
            trainee = make_trainee(job.spec, Path("."), method,
                                   TraineeSetup(shape.num_classes, teacher, images[:2].cpu(), context, execution))
            trainee.rng = RngStream(0, device)
            teacher_out, teacher_weak = outputs.get(teacher_name, (None, None))
            step_batch = two_views if method.needs.weak_view else batch
            contenders[(group.key, "step", *key)] = partial(
                _step, trainee, step_batch, teacher_out, teacher_weak if method.needs.weak_view else None, autocast)
        for student in group.students:
            model = execution.laid_out(create_model(student, num_classes=shape.num_classes).to(device).eval())
            contenders[(group.key, "eval", student)] = partial(_forward, model, batch.images, autocast)
        threads = torch.get_num_threads()
        if device.type == "cpu":  # one thread per call, the cores' share of the work (see the module docstring)
            torch.set_num_threads(1)
        try:
            timings = interleaved(contenders, device, None, ROUNDS)
        finally:
            torch.set_num_threads(threads)
        cores = threads if device.type == "cpu" else 1
        rates.seconds.update({key: seconds / n / cores for key, seconds in timings.items()})
    return rates


def _forward(model: torch.nn.Module, images: torch.Tensor, autocast: Autocast) -> None:
    with torch.no_grad(), autocast():
        model(images)


def _step(trainee, batch: Batch, teacher_out, teacher_weak, autocast: Autocast) -> None:
    with trainee.rng.active():
        trainee_step(trainee, batch, teacher_out, 1, 0.0, autocast, teacher_weak=teacher_weak)


@dataclass
class Line:
    """One (data set, pair) of the estimate."""

    dataset: str
    pair: str
    runs: int = 0
    seconds: float = 0.0  # its runs' shares, cohorts sharing
    alone: float = 0.0  # the same runs trained one by one, each with its own teacher forward
    left: float = 0.0  # the shares of its runs not yet finished


@dataclass
class Estimate:
    """A suite's cost on this machine's device."""

    device: str
    lines: list[Line]
    families: dict[str, str]  # family → the method that stood for it
    unknown: list[str]  # data sets that could not be costed, with why
    batch: dict[str, int]  # data set → images per timed call (on the CPU, fewer than the recipe's)
    official: list[str]  # data sets costed at their official sizes (not found here)
    load: float  # the machine's load average (1 min) when the calls were timed

    @property
    def seconds(self) -> float:
        return sum(line.seconds for line in self.lines)

    @property
    def alone(self) -> float:
        return sum(line.alone for line in self.lines)

    @property
    def left(self) -> float:
        return sum(line.left for line in self.lines)


def estimate(jobs: list[Job], cohort_size: int, data_root: str | None, options: EngineOptions,
             finished: set[str] = frozenset(), subset: int | None = None,
             say: Callable[[str], None] = lambda line: None) -> Estimate:
    """The device-seconds of ``jobs`` (a suite's selected jobs) trained in cohorts of at
    most ``cohort_size`` on ``options.device``; ``finished``: run ids already done (the
    rest is what is left)."""
    device = resolve_device(options.device)
    shapes = {spec.model_dump_json(): data_shape(spec, data_root, subset)
              for spec in {j.spec.dataset.model_dump_json(): j.spec.dataset for j in jobs}.values()}
    methods = {j.run_id: create_method(j.spec.method, **j.spec.hparams) for j in jobs}
    groups: dict[tuple, Group] = {}
    families: dict[str, str] = {}
    unknown = sorted({f"{j.spec.dataset.name}: not found here, and its size is not known to the estimate"
                      for j in jobs if shapes[j.spec.dataset.model_dump_json()] is None})
    costed = [j for j in jobs if shapes[j.spec.dataset.model_dump_json()] is not None]
    cohorts = form_cohorts(costed, cohort_size)
    for cohort in cohorts:
        for job in cohort:
            method = methods[job.run_id]
            shape = shapes[job.spec.dataset.model_dump_json()]
            key = _group_key(job, shape)
            group = groups.setdefault(key, Group(key, [], shape, job.spec.recipe))
            if job.spec.dataset.name not in group.datasets:
                group.datasets.append(job.spec.dataset.name)
            group.shape = replace(group.shape, num_classes=max(group.shape.num_classes, shape.num_classes),
                                  train=max(group.shape.train, shape.train))
            step = _step_key(job, method)
            group.steps.setdefault(step, job)
            families.setdefault(step[2], job.spec.method)
            group.students.add(job.spec.student)
            if step[1] is not None:
                group.teachers.setdefault(step[1], set()).update(method.needs.teacher_stages)
    rates = measure(list(groups.values()), device, options, say)
    load = os.getloadavg()[0]
    lines: dict[tuple[str, str], Line] = {}
    for cohort in cohorts:
        own, shared = _cohort_seconds(cohort, methods, rates, groups, shapes)
        for job in cohort:
            line = lines.setdefault((job.spec.dataset.name, job.pair), Line(job.spec.dataset.name, job.pair))
            seconds = own[job.run_id] + shared / len(cohort)
            line.runs += 1
            line.seconds += seconds
            line.alone += own[job.run_id] + (shared if _step_key(job, methods[job.run_id])[1] else 0.0)
            line.left += 0.0 if job.run_id in finished else seconds
    return Estimate(str(device), list(lines.values()), families, unknown,
                    {", ".join(group.datasets): rates.batch[key] for key, group in groups.items()},
                    sorted({j.spec.dataset.name for j in costed if not shapes[j.spec.dataset.model_dump_json()].found}),
                    load)


def _cohort_seconds(cohort: tuple[Job, ...], methods: dict[str, Method], rates: Rates, groups: dict[tuple, Group],
                    shapes: dict[str, DataShape]) -> tuple[dict[str, float], float]:
    """Each run's own seconds (its steps and evaluation) and the seconds its cohort shares
    (the teacher's forward per batch, its test evaluation, its logits on the training split)."""
    lead = cohort[0]
    shape = shapes[lead.spec.dataset.model_dump_json()]
    group = groups[_group_key(lead, shape)]
    recipe, seconds = lead.spec.recipe, rates.seconds
    steps = math.ceil(shape.train / recipe.batch_size) * recipe.batch_size  # images stepped per epoch
    own = {}
    for job in cohort:
        step = _step_key(job, methods[job.run_id])
        own[job.run_id] = job.spec.recipe.epochs * (steps * seconds[(group.key, "step", *step)]
                                                    + (shape.val + shape.test) * seconds[(group.key, "eval", job.spec.student)])
    teacher = next((t for j in cohort if (t := _step_key(j, methods[j.run_id])[1])), None)
    if teacher is None:
        return own, 0.0
    forward = seconds[(group.key, "forward", teacher)]
    calibrates = any(methods[j.run_id].needs.teacher_train_logits for j in cohort)
    return own, forward * (recipe.epochs * steps + shape.test + (shape.train if calibrates else 0))


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f}" if seconds < 360_000 else f"{seconds / 3600:,.0f}"


def describe(estimate: Estimate, threads: int | None = None) -> list[str]:
    """The estimate as lines for people: per data set and pair, then the total."""
    where = f"{estimate.device}" + (f", {threads} threads" if threads and estimate.device == "cpu" else "")
    lines = [f"cost estimate: device-hours on this machine's {where} (step times measured here, one device, "
             "cohorts sharing each batch's teacher forward)"]
    width = max([34, *(len(x.pair) for x in estimate.lines)])
    lines.append(f"  {'data set':<16} {'pair':<{width}} {'runs':>5} {'hours':>10} {'left':>10}")
    for line in sorted(estimate.lines, key=lambda x: (x.dataset, x.pair)):
        lines.append(f"  {line.dataset:<16} {line.pair:<{width}} {line.runs:>5} {hours(line.seconds):>10} "
                     f"{hours(line.left):>10}")
    lines.append(f"  {'total':<{width + 17}} {sum(x.runs for x in estimate.lines):>5} {hours(estimate.seconds):>10} "
                 f"{hours(estimate.left):>10}")
    if estimate.lines:
        saved = 1 - estimate.seconds / estimate.alone if estimate.alone else 0.0
        lines.append(f"  one by one (no cohorts) {hours(estimate.alone)} h: cohorts save {saved:.0%}")
        lines.append("  families timed with: " + ", ".join(f"{f} ({m})" for f, m in estimate.families.items()))
    if estimate.device == "cpu":
        lines.append(f"  timed on one thread at load average {estimate.load:.1f} on {usable_cores()} cores, for the "
                     "machine to itself: others' work adds to the hours")
    if estimate.device == "cpu" and estimate.batch:
        lines.append("  on the CPU each call held " + ", ".join(f"{n} images ({name})" for name, n in estimate.batch.items())
                     + ", scaled to the recipe's batch")
    if estimate.official:
        lines.append(f"  not found here, costed at their official sizes: {', '.join(estimate.official)}")
    lines.extend(f"  not costed: {problem}" for problem in estimate.unknown)
    return lines


def suite_estimate(plan: Plan, say: Callable[[str], None] = lambda line: None) -> Estimate:
    """The estimate of the plan's jobs (``--only``, ``--smoke``) on its device; runs already
    finished in its folder, or in another suite's that it will take them from, are not 'left'."""
    finished = {j.run_id for j in plan.jobs if store.status_of(plan.runs, j.run_id) == store.RunStatus.FINISHED}
    finished |= set(plan.finished_elsewhere)
    return estimate(plan.jobs, plan.suite.file.executor.cohort_size, plan.engine.data_root, plan.engine, finished,
                    plan.engine.subset, say)


def print_estimate(plan: Plan) -> Estimate:
    """``kdbench run --dry-run``'s cost lines, printed with the plan's printer."""
    say = plan.options.printer
    say("")
    result = suite_estimate(plan, say)
    for line in describe(result, torch.get_num_threads()):
        say(line)
    return result
