"""The Method contract: what a distillation method declares and computes.

A method file registers one class::

    class KDHParams(HParams):
        temperature: PositiveFloat = 4.0
        ...

    @register_method
    class KD(Method):
        '''Hinton et al. 2015: L = w_ce·CE + w_kd·T²·KL(p_t‖p_s).'''
        name = "kd"
        HParams = KDHParams

        def loss(self, student, teacher, batch, epoch):
            return {"ce": ..., "kd": ...}

The engine reads ``needs`` (teacher or not, which intermediate stages), calls ``setup``
once with the shapes a method may need to build its own modules (CRD heads, FreeKD
projectors), and then ``loss`` every step; the returned terms are already weighted, are
summed for the backward pass and are each logged under their name. A Method is an
``nn.Module``: its parameters train with the student and its buffers (CRD's memory) are
saved in checkpoints.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha1
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pydantic
from torch import Tensor, nn

from .errors import ConfigError, ValidationProblem, explain_validation
from .models.base import ModelOutput
from .registry import Registry

ENTRY_POINT_GROUP = "kdbench.methods"


class HParams(pydantic.BaseModel):
    """Base of every method's typed hyperparameters: unknown keys are rejected."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Needs:
    """What a method asks the engine for beyond logits, final feature map and embedding
    (those three come with every forward at no extra cost)."""

    teacher: bool = True
    stages: tuple[str, ...] = ()  # intermediate stages of both models, e.g. ("stage3",)
    # The teacher's stages where they are not the student's (a CIFAR VGG's stage numbers
    # count its stem block, a MobileNetV2's do not); left out: ``stages``. A name may be
    # ``kdbench.models.preact(stage)``, the stage's pre-activation map (ReviewKD's).
    teacher_stages: tuple[str, ...] | None = None
    # The teacher's logits on every training sample (eval transform), computed once before
    # training, for methods that calibrate on them (FiGKD's teacher class order).
    teacher_train_logits: bool = False
    # A second view of every training image, augmented with the standard recipe (MLKD's
    # weak view; the first view is augmented as the recipe says, e.g. strong): the engine
    # draws it from the data stream and gives the method both models' outputs on it
    # (``Batch.weak``).
    weak_view: bool = False

    def __post_init__(self) -> None:
        if self.teacher_stages is None:
            object.__setattr__(self, "teacher_stages", self.stages)


@dataclass(frozen=True)
class ViewOutputs:
    """Both models' outputs on a second view of the batch's images."""

    student: ModelOutput
    teacher: ModelOutput | None


@dataclass
class Batch:
    images: Tensor
    labels: Tensor  # hard labels, also when the images are mixed
    index: Tensor  # position of each sample in the training set
    # Under mixup / CutMix (recipe ``mixup_alpha``, ``cutmix_alpha``): the mixed one-hot
    # rows B×C of the images as mixed; None otherwise. Use ``targets`` for cross-entropy.
    mixed_targets: Tensor | None = None
    weak_images: Tensor | None = None  # the second view, when a method ``needs.weak_view``
    weak: ViewOutputs | None = None  # outputs on ``weak_images``, given to the methods that need them

    @property
    def targets(self) -> Tensor:
        """The cross-entropy target: the mixed rows under mixup / CutMix, else the labels
        (``F.cross_entropy`` takes either)."""
        return self.labels if self.mixed_targets is None else self.mixed_targets


def _own_rows(rows: Tensor) -> Tensor:
    """A single process's global batch: its own rows."""
    return rows


@dataclass
class TrainContext:
    """Facts a method may build its modules from, given once before training."""

    num_classes: int
    train_labels: Tensor  # label of every training sample, in dataset order
    epochs: int
    seed: int
    student: ModelOutput  # outputs on a probe batch: shapes of logits, stages, embedding
    teacher: ModelOutput | None
    teacher_train_logits: Tensor | None = None  # filled when ``Needs.teacher_train_logits``
    # The global batch's rows of a tensor holding this process's rows (dim 0): under
    # torchrun every rank's rows in rank order, which is the single-process batch's order;
    # the tensor itself in one process. State kept across samples (CRD's memory) is updated
    # from it, so that it is the same on every rank as in one process.
    gather: Callable[[Tensor], Tensor] = _own_rows


class Method(nn.Module, ABC):
    name: ClassVar[str]
    HParams: ClassVar[type[HParams]] = HParams
    # How tables and figures show the method (``FiGKD``) and its colour in every figure
    # (any matplotlib colour); unset, the report uses ``name`` and a colour from its hash.
    display_name: ClassVar[str | None] = None
    color: ClassVar[str | None] = None
    # Part of every run id. Bump it when a change alters what the method computes for the
    # same hyperparameters (a fixed bug, a changed formula), so old records are not reused;
    # adding a hyperparameter whose default keeps today's behaviour needs no bump.
    version: ClassVar[int] = 1
    # Where this implementation knowingly differs from the authors' released code, one line
    # each (the docstring says why); every report's protocol card lists them.
    release_differences: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.hparams = parse_hparams(type(self), hparams)

    @property
    def needs(self) -> Needs:
        return Needs()

    def check_classes(self, num_classes: int) -> None:
        """Raise ConfigError when the hyperparameters cannot work with ``num_classes``
        classes; the runner asks before a suite trains anything. Most methods take any."""

    def setup(self, context: TrainContext) -> None:
        """Build the method's own modules; the default method has none."""

    @abstractmethod
    def loss(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch, epoch: int
    ) -> dict[str, Tensor]:
        """Named, weighted loss terms; ``epoch`` counts from 1."""

    def extra_repr(self) -> str:
        return repr(self.hparams)


def parse_hparams(method: type[Method], values: dict[str, Any]) -> HParams:
    try:
        return method.HParams(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"method '{method.name}': "
                          + explain_validation(exc, method.HParams, line=_hyperparameter_problem, separator="; ")) from None


def _hyperparameter_problem(problem: ValidationProblem) -> str:
    if problem.kind == "unknown":
        return f"unknown hyperparameter '{problem.key}'{problem.hint}"
    return f"hyperparameter '{problem.key or '(hyperparameters)'}': {problem.message} (got {problem.got!r})"


def warmup(epoch: int, epochs: int) -> float:
    """Linear warm-up factor min(epoch / epochs, 1), epochs counted from 1 (DKD, PCD)."""
    return 1.0 if epochs <= 0 else min(epoch / epochs, 1.0)


# --- the registry ------------------------------------------------------------------------


def _discover_methods() -> None:
    """Import the bundled methods, then every method an installed package declares."""
    from . import methods as bundled

    for module in pkgutil.iter_modules(bundled.__path__):
        importlib.import_module(f"{bundled.__name__}.{module.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


METHODS: Registry[type[Method]] = Registry("method", discover=_discover_methods)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    return METHODS.register(cls.name, cls)


def create_method(name: str, **hparams: Any) -> Method:
    return METHODS.get(name)(**hparams)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def load_method_files(*paths: str | Path) -> list[str]:
    """Import method files (or every ``*.py`` in a folder) from outside the package.

    Returns the names they registered. A file loaded twice is imported once.
    """
    before = set(list_methods())
    for path in paths:
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"method file or folder '{path}' does not exist")
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for file in files:
            module_name = f"kdbench_user_methods.{file.stem}_{sha1(str(file).encode()).hexdigest()[:8]}"
            if module_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(module_name, file)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot import method file '{file}'")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except SyntaxError as exc:
                del sys.modules[module_name]
                code = f": {exc.text.strip()}" if exc.text else ""
                raise ConfigError(f"method file '{file}', line {exc.lineno}: {exc.msg}{code}; fix the file "
                                  "(python -m py_compile names the same line)") from None
            except Exception as exc:
                del sys.modules[module_name]
                lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == str(file)]
                where = f", line {lines[-1]}" if lines else ""
                raise ConfigError(f"method file '{file}'{where} fails when imported: {type(exc).__name__}: {exc}"
                                  ) from exc
    return sorted(set(list_methods()) - before)
