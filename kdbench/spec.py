"""RunSpec: the fully resolved description of one run, and its content hash (the run id).

Everything that changes what a run computes is in the spec and therefore in its id, so a
changed hyperparameter makes a new run instead of overwriting an old one. Where data lives
on this machine (the data root) and how fast it is read are not part of the id.

A spec is resolved when it is built, wherever it is built (CLI, suite, ablation, a
worker reading it back): the method's hyperparameters are validated and every default is
filled in, the method's ``version`` is recorded, the data set's options are validated and
completed, and a teacher checkpoint is identified by the sha256 of its bytes, not by its
path. So ``kd: {}``, ``kd: {temperature: 4}`` and ``kd: {temperature: 4.0}`` are one run,
a changed default or method version is a new one, and moving a checkpoint file is not.
Errors are ``SpecError`` with a message for people (not a ValueError, so pydantic passes
them through unwrapped).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationInfo, field_validator)

from .data.transforms import Augment
from .errors import KDBenchError


class SpecError(KDBenchError):
    """A run spec that cannot be resolved: unknown method or data set, a bad hyperparameter
    or data-set option."""


class Strict(BaseModel):
    # Defaults are validated too: a spec built without ``hparams`` gets them resolved.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


Precision = Literal["fp32", "bf16", "fp16"]
# Which of a trained teacher's epochs its students learn from: the last, or the one with the
# best validation (or, as some published protocols did, test) top-1.
TeacherWeights = Literal["last", "best_val", "best_test"]
# Each rule that selects an epoch, in words (a suite's selection, a teacher's weights).
SELECTED_EPOCH = {
    "best_val": "the epoch with the best validation accuracy",
    "last": "the last epoch",
    "best_test": "the epoch with the best test accuracy (selected on test)",
}
# Spellings of a precision that name the same thing (PyTorch Lightning's among them), so
# that ``bf16``, ``bfloat16`` and ``bf16-mixed`` are one run id.
PRECISION_SPELLINGS: dict[str, Precision] = {
    "fp32": "fp32", "float32": "fp32", "32": "fp32", "32-true": "fp32", "full": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "fp16": "fp16", "float16": "fp16", "16": "fp16", "16-mixed": "fp16", "half": "fp16",
}


class Recipe(Strict):
    """How a model is trained. Defaults are the CIFAR-100 recipe of mdistiller/RepDistiller
    (SGD 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, ×0.1 at 150/180/210)."""

    epochs: PositiveInt = 240
    batch_size: PositiveInt = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    # Decay after these epochs; None: at 62.5%, 75% and 87.5% of training, which is
    # 150/180/210 of the published 240 and scales to short runs.
    milestones: tuple[PositiveInt, ...] | None = None
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeInt = 0  # linear learning-rate warm-up
    # Training-image augmentation (kdbench.data.transforms.AUGMENTATIONS): "none" (the eval
    # transform), "standard" (the set's crop + flip), "strong" (MLKD's: standard, then
    # RandAugment and Cutout). The old booleans still load: true is standard, false none.
    augment: Augment = "standard"
    # Mixup / CutMix on whole batches (timm.data.Mixup, label smoothing 0); 0 is off. With
    # either on, the cross-entropy target becomes soft (Batch.targets); both on: each batch
    # is one or the other with probability ½.
    mixup_alpha: NonNegativeFloat = 0.0
    cutmix_alpha: NonNegativeFloat = 0.0
    # The arithmetic of training: fp32 (every published reference), or autocast to bf16 or
    # fp16 (fp16 with a GradScaler). It changes what a run computes, so it is in the run id.
    precision: Precision = "fp32"

    @field_validator("augment", mode="before")
    @classmethod
    def _old_boolean(cls, value: Any) -> Any:
        return ("standard" if value else "none") if isinstance(value, bool) else value

    @field_validator("precision", mode="before")
    @classmethod
    def _one_spelling(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return value
        canonical = PRECISION_SPELLINGS.get(str(value).strip().lower())
        if canonical is None:
            raise ValueError(f"unknown precision {value!r}; use fp32, bf16 or fp16")
        return canonical

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or CutMix), making the CE target soft."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        if self.milestones is not None:
            return self.milestones
        return tuple(round(self.epochs * f) for f in (0.625, 0.75, 0.875))


class DataSpec(Strict):
    name: str
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)  # every option of the set, defaults filled

    @field_validator("options")
    @classmethod
    def _complete_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .data import dataset_options

        if "name" not in info.data:
            return options
        try:
            return dataset_options(info.data["name"], options)
        except KDBenchError as exc:
            raise SpecError(str(exc)) from None

    @property
    def training_split(self) -> str:
        """What the run trains on, in words."""
        if self.val_fraction == 0:
            return "the whole official training split (no validation split)"
        return (f"{1 - self.val_fraction:.0%} of the official training split ({self.val_fraction:.0%} held out, "
                "stratified, as the validation split)")


class TeacherRef(Strict):
    """Where the teacher comes from: a checkpoint file (identified by its bytes' sha256; the
    path says only where it is on this machine and is not part of the run id), or a kdbench
    run (its id)."""

    model: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None  # filled from the file; None while the file is missing
    run_id: str | None = None
    weights: TeacherWeights = "last"  # a teacher run's epoch the students load; a checkpoint is its file

    @field_validator("checkpoint_sha256")
    @classmethod
    def _hash_checkpoint(cls, given: str | None, info: ValidationInfo) -> str | None:
        path = info.data.get("checkpoint")
        if path is None or not Path(path).is_file():
            return given
        return file_sha256(Path(path))


class RunSpec(Strict):
    dataset: DataSpec
    student: str
    method: str = "none"
    method_version: PositiveInt = 1  # always the registered class's ``version``
    hparams: dict[str, Any] = Field(default_factory=dict)  # validated, every default filled
    teacher: TeacherRef | None = None
    recipe: Recipe = Field(default_factory=Recipe)
    seed: NonNegativeInt = 0

    @field_validator("method_version", mode="plain")
    @classmethod
    def _current_version(cls, given: Any, info: ValidationInfo) -> int:
        from .method import METHODS

        return METHODS.get(info.data["method"]).version if "method" in info.data else given

    @field_validator("hparams")
    @classmethod
    def _complete_hparams(cls, hparams: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .method import METHODS, parse_hparams

        if "method" not in info.data:
            return hparams
        try:
            return parse_hparams(METHODS.get(info.data["method"]), hparams).model_dump(mode="json")
        except KDBenchError as exc:
            raise SpecError(str(exc)) from None

    @property
    def run_id(self) -> str:
        return spec_hash(self.model_dump(mode="json", exclude={"teacher": {"checkpoint"}}))

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with ``changes``, resolved again (``model_copy`` would skip validation)."""
        return RunSpec.model_validate({**self.model_dump(), **changes})

    def describe(self) -> str:
        pair = f"{self.teacher.model}→{self.student}" if self.teacher else self.student
        return f"{self.dataset.name} {pair} {self.method} seed={self.seed}"


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, computed once per process for an unchanged file."""
    stat = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def spec_hash(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
