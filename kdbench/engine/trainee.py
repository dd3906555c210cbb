"""A trainee: one run of a cohort (its student, its method with the method's own modules,
its optimizer) and what it carries from step to step; and the cohort's frozen teacher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from ..store.checkpoints import load_weights
from ..errors import ConfigError
from ..method import Batch, Method, TrainContext, ViewOutputs
from ..models import Backbone, ModelOutput, create_model
from ..spec import RunSpec
from .batches import to_device
from .options import Execution
from .schedule import make_optimizer
from .streams import RngStream, seed_everything


class StudentWithMethod(nn.Module):
    """A run's student and its method (with the method's own modules) as one module, whose
    forward is a step's named loss terms; under torchrun it is what DistributedDataParallel
    wraps, so that the method's parameters are averaged over ranks with the student's."""

    def __init__(self, student: Backbone, method: Method) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, batch: Batch, teacher_out: ModelOutput | None, teacher_weak: ModelOutput | None,
                epoch: int) -> dict[str, Tensor]:
        """The loss terms on ``batch``; for a method that ``needs.weak_view``, the student
        sees the weak view first (as in MLKD's code, which matters only to BatchNorm's
        running statistics), and ``teacher_weak`` holds the teacher's outputs on it."""
        if self.method.needs.weak_view:
            batch = replace(batch, weak=ViewOutputs(self.student(batch.weak_images),
                                                    teacher_weak if self.method.needs.teacher else None))
        return loss_terms(self.method, self.student(batch.images), teacher_out, batch, epoch)


def loss_terms(method: Method, student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Batch,
               epoch: int) -> dict[str, Tensor]:
    """The method's named loss terms (the teacher's outputs only if it needs them)."""
    return method.loss(student_out, teacher_out if method.needs.teacher else None, batch, epoch)


@dataclass
class Trainee:
    """One run of a cohort and everything it carries from step to step."""

    spec: RunSpec
    run_dir: Path
    model: Backbone
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: RngStream | None = None
    sums: dict[str, Tensor] = field(default_factory=dict)
    seen: int = 0
    error: BaseException | None = None
    # The model at the epoch of the best val and test top-1 so far (on the CPU), kept in the
    # checkpoint so that they always agree with the history, and written when the run ends.
    best_weights: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    # what a step calls: the student and method as one module (``StudentWithMethod``), in
    # DistributedDataParallel under torchrun (``distributed.data_parallel``)
    network: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.network = StudentWithMethod(self.model, self.method)

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1


@dataclass(frozen=True)
class TraineeSetup:
    """What every trainee of a cohort is built from, beside its own spec and method."""

    num_classes: int
    teacher: Backbone | None
    probe: Tensor  # a few training images, whose outputs give the methods' set-up their shapes
    context: Callable[..., TrainContext]  # completes a TrainContext given the probe outputs of student and teacher
    execution: Execution


def make_trainee(spec: RunSpec, run_dir: Path, method: Method, setup: TraineeSetup) -> Trainee:
    """A run's student, its method set up from probe outputs, and its optimizer."""
    teacher, execution = setup.teacher, setup.execution
    device = execution.device
    if spec.recipe.precision != execution.precision:
        raise ValueError(f"run '{spec.describe()}' trains in {spec.recipe.precision}, "
                         f"but its trainee would be set up for {execution.precision}")
    if method.needs.teacher and teacher is None:
        raise ConfigError(f"method '{spec.method}' distils from a teacher, but run '{spec.describe()}' has none")
    if method.needs.weak_view and spec.recipe.mixes:
        raise ConfigError(f"method '{spec.method}' trains on two views of each image, which kdbench does not mix: "
                          f"set the recipe's mixup_alpha and cutmix_alpha to 0 for run '{spec.describe()}'")
    seed_everything(spec.seed)  # each run's initialisation as if it were trained alone
    model = distributed.sync_batchnorm(create_model(spec.student, num_classes=setup.num_classes), device).to(device)
    execution.laid_out(model)
    model.tap(method.needs.stages)
    probe = to_device(setup.probe, execution)
    with torch.no_grad():
        student_probe = model.eval()(probe).detach()
        teacher_probe = teacher(probe).detach() if teacher is not None and method.needs.teacher else None
    model.train()
    full = setup.context(student=student_probe, teacher=teacher_probe)
    if not method.needs.teacher_train_logits:
        full.teacher_train_logits = None
    method.setup(full)
    distributed.sync_batchnorm(method, device)
    method.to(device)
    if execution.options.compile:
        model.compile()
    optimizer = make_optimizer(spec.recipe, list(model.parameters()) + list(method.parameters()))
    return Trainee(spec, run_dir, model, method, optimizer, execution.grad_scaler())


def build_teacher(spec: RunSpec, num_classes: int, weights: Path | None, device: torch.device) -> Backbone | None:
    """The run's teacher with its trained weights, frozen, in eval mode; None without one."""
    if spec.teacher is None:
        return None
    if weights is None:
        raise ConfigError(f"run '{spec.describe()}' names teacher {spec.teacher.model} but no weights for it")
    teacher = create_model(spec.teacher.model, num_classes=num_classes)
    load_weights(teacher, weights, what=f"teacher {spec.teacher.model}")
    return teacher.eval().requires_grad_(False).to(device)
