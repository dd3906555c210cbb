"""One optimisation step: of a cohort on one batch (one teacher forward for every
trainee), of one trainee, or of a stack of trainees whose students share an architecture
(one vmapped forward). A run failing in a step fails alone; its cohort goes on.

Data-parallel (torchrun), a trainee's student and method are one DistributedDataParallel
module (``Trainee.network``), whose backward averages the gradients over ranks while it
runs. Each rank's loss is scaled by its share of the global batch (``share``) times the
number of ranks, so the average is the gradient of the global batch's mean loss. Before
the backward the ranks agree whether any of them raised (its method's loss, say): then
every rank skips the step and the run fails on all of them, none waiting for the others."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import distributed
from ..errors import KDBenchError
from ..method import Batch
from ..models import Backbone, ModelOutput
from ..models.stacked import StackedForward
from .options import Autocast, EngineOptions
from .schedule import set_learning_rate
from .trainee import Trainee, loss_terms


def cohort_step(batch: Batch, teacher: Backbone | None, trainees: Sequence[Trainee], epoch: int, fraction: float,
                autocast: Autocast = contextlib.nullcontext, share: float = 1.0,
                stacks: Sequence[StudentStack] = ()) -> None:
    """One optimisation step of every trainee on one batch, with one teacher forward;
    ``share``: this rank's fraction of the global batch (1 in a single process); the
    trainees of each of ``stacks`` step as one network."""
    live = {id(t) for t in trainees if t.error is None}
    teacher_out = teacher_weak = None
    if teacher is not None and any(t.error is None and t.method.needs.teacher for t in trainees):
        with torch.no_grad(), autocast():
            teacher_out = teacher(batch.images)
            if batch.weak_images is not None and any(t.error is None and t.method.needs.teacher
                                                     and t.method.needs.weak_view for t in trainees):
                teacher_weak = teacher(batch.weak_images)
    stepped = set()
    for stack in stacks:
        members = [t for t in stack.trainees if id(t) in live]
        stepped.update(id(t) for t in stacked_step(stack, members, batch, teacher_out, epoch, fraction, autocast))
    for trainee in trainees:
        if trainee.error is not None or id(trainee) in stepped:
            continue
        try:
            with trainee.rng.active():
                trainee_step(trainee, batch, teacher_out, epoch, fraction, autocast, share, teacher_weak)
        except Exception as exc:  # one run failing must not stop its cohort
            trainee.error = exc
    out_of_memory = [t.error for t in trainees if id(t) in live and isinstance(t.error, torch.OutOfMemoryError)]
    if out_of_memory and len(live) > 1:  # not the run's failure: the cohort may fit in smaller ones (runner.workers)
        raise out_of_memory[0]


def trainee_step(trainee: Trainee, batch: Batch, teacher_out: ModelOutput | None, epoch: int, fraction: float,
                 autocast: Autocast, share: float = 1.0, teacher_weak: ModelOutput | None = None) -> None:
    """One step of one trainee; ``teacher_weak``: the teacher's outputs on the batch's weak
    view, for a method that ``needs.weak_view`` (see ``StudentWithMethod``)."""
    set_learning_rate(trainee.optimizer, trainee.spec.recipe, epoch, fraction)
    device = batch.labels.device
    try:
        if trainee.method.needs.weak_view and batch.weak_images is None:
            raise KDBenchError(f"method '{trainee.spec.method}' needs a weak view but the batch has none")
        with autocast():
            terms = trainee.network(batch, teacher_out, teacher_weak, epoch)
        loss = sum(terms.values())
        if distributed.active():
            loss = loss * (share * distributed.world())  # averaged over ranks: the global batch's mean
    except Exception:
        distributed.any_failed(True, device)  # the other ranks learn of it and skip the step too
        raise
    if distributed.any_failed(False, device):
        raise KDBenchError("the step failed on another process")
    trainee.optimizer.zero_grad(set_to_none=True)
    scaled(trainee, loss).backward()
    update(trainee, terms, len(batch.labels))


@dataclass
class StudentStack:
    """Trainees with students of one architecture, stepped as one vmapped network
    (``models.stacked``); ``forward`` is None once the models turned out not to vmap."""

    forward: StackedForward | None
    trainees: list[Trainee]


def student_stacks(trainees: Sequence[Trainee], num_classes: int, options: EngineOptions) -> list[StudentStack]:
    """The cohort's students grouped by architecture, when ``options.stack_students``."""
    if not options.stack_students or options.compile or distributed.active():
        return []
    groups: dict[str, list[Trainee]] = {}
    for trainee in trainees:
        if not trainee.method.needs.weak_view:  # two views per step: these step alone
            groups.setdefault(trainee.spec.student, []).append(trainee)
    return [StudentStack(StackedForward(name, num_classes, sorted({s for t in group for s in t.method.needs.stages})),
                         group)
            for name, group in groups.items() if len(group) > 1]


def stacked_step(stack: StudentStack, members: list[Trainee], batch: Batch, teacher_out: ModelOutput | None,
                 epoch: int, fraction: float, autocast: Autocast) -> list[Trainee]:
    """One step of ``members``, trainees of the stack: one forward, each method's loss (in
    the trainee's random stream), one backward of the sum (each loss reaches only its own
    student), each optimizer's step. Returns the trainees it stepped: none when fewer
    than two are given, or when the models cannot be vmapped (they step alone from then)."""
    if stack.forward is None or len(members) < 2:
        return []
    try:
        with autocast():
            outputs = stack.forward([t.model for t in members], batch.images)
    except Exception as exc:  # e.g. a random layer, which vmap refuses
        warnings.warn(f"{members[0].spec.student} students cannot be stacked, so they step one by one: {exc}",
                      stacklevel=2)
        stack.forward = None
        return []
    live, all_terms = [], []
    for trainee, output in zip(members, outputs):
        set_learning_rate(trainee.optimizer, trainee.spec.recipe, epoch, fraction)
        try:
            with trainee.rng.active(), autocast():
                all_terms.append(loss_terms(trainee.method, output, teacher_out, batch, epoch))
            live.append(trainee)
        except Exception as exc:
            trainee.error = exc
    for trainee in live:
        trainee.optimizer.zero_grad(set_to_none=True)
    try:
        if live:
            sum(scaled(t, sum(terms.values())) for t, terms in zip(live, all_terms)).backward()
    except Exception as exc:
        for trainee in live:
            trainee.error = exc
        return members
    for trainee, terms in zip(live, all_terms):
        update(trainee, terms, len(batch.labels))
    return members


def scaled(trainee: Trainee, loss: Tensor) -> Tensor:
    """``loss`` scaled by the trainee's fp16 gradient scaler, if it has one."""
    return trainee.scaler.scale(loss) if trainee.scaler is not None else loss


def update(trainee: Trainee, terms: dict[str, Tensor], n: int) -> None:
    """The optimizer's step on the gradients in place, and the epoch's loss sums."""
    if trainee.scaler is not None:
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
    else:
        trainee.optimizer.step()
    for name, value in terms.items():
        trainee.sums[name] = trainee.sums.get(name, 0) + value.detach().float() * n
    trainee.seen += n
