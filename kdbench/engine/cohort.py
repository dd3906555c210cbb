"""Training a cohort: runs that share data set, teacher, seed and recipe and differ in
method, hyperparameters or student. They see one data stream and one teacher forward per
batch; a single run is a cohort of one. Each run keeps its own random stream, so a run
gets the same record in a cohort as alone, and a run that fails (its method, its set-up,
its resume, a step, a diverging loss) fails alone: its exception is its result.

``train_cohort`` reads as the run's flow: set-up (``_set_up``, whose order fixes the
random draws: data, teacher, each run's initialisation, resume), then the epochs
(``_epoch``: reseed the streams, step over the batches, evaluate and checkpoint), then
each run's record (``_records``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from . import distributed
from .. import store
from ..data import DataSplits
from ..errors import ConfigError
from ..method import Method, TrainContext, create_method
from ..models import Backbone
from ..spec import RunSpec
from ..store import RunRecord
from .batches import TrainBatches, eval_loader, open_data, shard
from .checkpoint import resume
from .epoch import Cohort, end_epoch, train_epoch
from .evaluation import evaluate, predict
from .options import EngineOptions, Execution, resolve_device
from .record import finish_run, teacher_outputs
from .step import student_stacks
from .streams import RngStream, epoch_seed, seed_everything
from .trainee import Trainee, TraineeSetup, build_teacher, make_trainee


def cohort_key(spec: RunSpec) -> str:
    """Runs with equal keys and at most one teacher between them can train as one cohort."""
    shared = spec.model_dump(mode="json", include={"dataset", "seed", "recipe"})
    return repr(sorted(shared.items()))


def train_run(spec: RunSpec, run_dir: Path, options: EngineOptions | None = None,
              teacher_weights: Path | None = None) -> RunRecord:
    """Train one run into ``run_dir`` (resuming from its checkpoint) and return its record."""
    result = train_cohort([spec], [run_dir], options, teacher_weights)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def train_cohort(specs: Sequence[RunSpec], run_dirs: Sequence[Path], options: EngineOptions | None = None,
                 teacher_weights: Path | None = None) -> list[RunRecord | BaseException]:
    """Train runs that share data, seed, recipe and teacher together; each result is the
    run's record, or the exception that ended it (the others go on)."""
    options = options or EngineOptions()
    teachers = {s.teacher for s in specs if s.teacher is not None}
    if len({cohort_key(s) for s in specs}) != 1 or len(teachers) > 1:
        raise ValueError("a cohort's runs must share data set, seed, recipe and teacher")
    lead = next((s for s in specs if s.teacher is not None), specs[0])
    device = distributed.setup(resolve_device(options.device))
    cohort = _set_up(specs, [Path(d) for d in run_dirs], lead, device, options, teacher_weights)

    trainees = list(cohort.trainees.values())
    weak_view = any(t.method.needs.weak_view for t in trainees)
    batches = TrainBatches.of(cohort.data, lead.recipe, weak_view, cohort.execution)
    started = time.time()
    for epoch in range(min((t.next_epoch for t in trainees), default=lead.recipe.epochs + 1), lead.recipe.epochs + 1):
        _epoch(cohort, batches, epoch)

    results = _records(cohort, len(specs), started)
    distributed.barrier()  # the other ranks read rank 0's files (a teacher's weights) only once they are written
    return results


def _set_up(specs: Sequence[RunSpec], run_dirs: list[Path], lead: RunSpec, device: torch.device,
            options: EngineOptions, teacher_weights: Path | None) -> Cohort:
    """The options resolved (``Execution``), then data, teacher, evaluation loaders and each
    run's trainee (resumed from its checkpoint), in this order: it fixes every random draw
    before the first epoch."""
    recipe = lead.recipe
    if recipe.batch_size % distributed.world():
        raise ConfigError(f"batch size {recipe.batch_size} does not divide among {distributed.world()} processes")
    for spec, run_dir in zip(specs, run_dirs) if distributed.is_main() else ():
        store.write_spec(run_dir, spec)
    execution = Execution.of(options, device, recipe.precision)

    seed_everything(lead.seed)
    data = open_data(lead, options, augment=recipe.augment)
    methods, failures = _create_methods(specs)
    teacher = _teacher(lead, data.num_classes, methods, teacher_weights, execution)
    eval_batch = max(recipe.batch_size, 256)
    val_loader = eval_loader(shard(data.val), eval_batch, execution) if len(data.val) else None
    test_loader = eval_loader(shard(data.test), eval_batch, execution)
    context = _context(lead, data, teacher, methods, eval_batch, execution)
    probe = torch.stack([data.train[i][0] for i in range(2)])  # shapes for the methods' setup
    trainees = _trainees(specs, run_dirs, methods, TraineeSetup(data.num_classes, teacher, probe, context, execution),
                         failures)
    stacks = student_stacks(list(trainees.values()), data.num_classes, options)
    teacher_test = evaluate(teacher, test_loader, execution, reduce=True)["top1"] if teacher is not None else None
    return Cohort(lead, execution, data, teacher, teacher_test, trainees, failures, eval_batch, val_loader,
                  test_loader, stacks)


def _create_methods(specs: Sequence[RunSpec]) -> tuple[dict[int, Method], dict[int, Exception]]:
    """Each run's method, by position; a run whose method cannot be built fails alone."""
    methods: dict[int, Method] = {}
    failures: dict[int, Exception] = {}
    for i, spec in enumerate(specs):
        try:
            methods[i] = create_method(spec.method, **spec.hparams)
        except Exception as exc:
            failures[i] = exc
    return methods, failures


def _teacher(lead: RunSpec, num_classes: int, methods: dict[int, Method], weights: Path | None,
             execution: Execution) -> Backbone | None:
    """The cohort's teacher, tapped at every stage its runs' methods read."""
    teacher = build_teacher(lead, num_classes, weights, execution.device)
    if teacher is not None:
        teacher.tap(sorted({stage for m in methods.values() if m.needs.teacher for stage in m.needs.teacher_stages}))
        execution.laid_out(teacher)
    return teacher


def _context(lead: RunSpec, data: DataSplits, teacher: Backbone | None, methods: dict[int, Method],
             eval_batch: int, execution: Execution) -> Callable[..., TrainContext]:
    """The TrainContext of the cohort's methods, to be completed with each run's probe
    outputs; the teacher's logits on every training sample when a method needs them."""
    recipe = lead.recipe
    teacher_train_logits = None
    if teacher is not None and any(m.needs.teacher_train_logits for m in methods.values()):
        plain = eval_loader(open_data(lead, execution.options, augment=False).train, eval_batch, execution)
        teacher_train_logits = predict(teacher, plain, execution)
    return partial(TrainContext, data.num_classes, torch.as_tensor(data.train_labels, dtype=torch.long),
                   recipe.epochs, lead.seed, teacher_train_logits=teacher_train_logits,
                   gather=distributed.all_gather_cat)


def _trainees(specs: Sequence[RunSpec], run_dirs: list[Path], methods: dict[int, Method], setup: TraineeSetup,
              failures: dict[int, Exception]) -> dict[int, Trainee]:
    """Each run's trainee, resumed, and under torchrun in DistributedDataParallel, which
    copies rank 0's state to every rank; a run whose set-up or resume fails is added to
    ``failures``."""
    ready: dict[int, Trainee] = {}
    for i, method in methods.items():
        try:
            trainee = make_trainee(specs[i], run_dirs[i], method, setup)
            resume(trainee, setup.execution.device)
            trainee.network = distributed.data_parallel(trainee.network)
        except torch.OutOfMemoryError:
            raise  # the cohort's, not the run's: it may fit in smaller ones (runner.workers)
        except Exception as exc:
            failures[i] = exc
        else:
            ready[i] = trainee
    return ready


def _epoch(cohort: Cohort, batches: TrainBatches, epoch: int) -> None:
    """One epoch of the trainees that have not failed and have not trained it yet (a
    resumed run may be ahead of the rest of its cohort)."""
    active = [t for t in cohort.trainees.values() if t.error is None and t.next_epoch == epoch]
    if not active:
        return
    seed, device = cohort.lead.seed, cohort.execution.device
    for trainee in active:
        trainee.rng = RngStream(distributed.rank_seed(epoch_seed(seed, epoch, 2)), device)
        trainee.sums, trainee.seen = {}, 0
    data_stream = RngStream(distributed.rank_seed(epoch_seed(seed, epoch, 1)), device)
    epoch_batches = batches.epoch(epoch_seed(seed, epoch, 0), data_stream)
    epoch_start = time.perf_counter()
    train_epoch(cohort, active, epoch, epoch_batches, batches.sampler)
    epoch_seconds = time.perf_counter() - epoch_start
    for trainee in active:
        if trainee.error is None:
            end_epoch(cohort, trainee, epoch, epoch_seconds / len(active))


def _records(cohort: Cohort, count: int, started: float) -> list[RunRecord | BaseException]:
    """Each run's record, or the exception that ended it; rank 0 evaluates on the whole
    test set and writes the finished runs' files."""
    execution = cohort.execution
    final_loader = eval_loader(cohort.data.test, cohort.eval_batch, execution) if distributed.is_main() else None
    teacher_logits = None
    if final_loader is not None and cohort.teacher is not None and any(
            t.error is None and t.method.needs.teacher for t in cohort.trainees.values()):
        splits = {"test": final_loader}
        if len(cohort.data.val):
            splits["val"] = eval_loader(cohort.data.val, cohort.eval_batch, execution)
        teacher_logits = teacher_outputs(cohort.teacher, splits, execution)
    results: list[RunRecord | BaseException] = []
    for i in range(count):
        trainee = cohort.trainees.get(i)
        if i in cohort.failures:
            results.append(cohort.failures[i])
        elif trainee.error is not None:
            results.append(trainee.error)
        else:
            teacher, teacher_test = ((cohort.teacher, cohort.teacher_test) if trainee.method.needs.teacher
                                     else (None, None))
            results.append(finish_run(trainee, teacher, teacher_test, final_loader, execution, started,
                                      teacher_logits))
    return results
