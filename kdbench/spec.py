"""RunSpec: the fully resolved description of one run, and its content hash (the run id).

Everything that changes what a run computes is in the spec and therefore in its id, so a
changed hyperparameter makes a new run instead of overwriting an old one. Where data lives
on this machine (the data root) and how fast it is read are not part of the id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    augment: bool = True

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        if self.milestones is not None:
            return self.milestones
        return tuple(round(self.epochs * f) for f in (0.625, 0.75, 0.875))


class DataSpec(Strict):
    name: str
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)


class TeacherRef(Strict):
    """Where the teacher comes from: a checkpoint file, or a kdbench run (its id)."""

    model: str
    checkpoint: str | None = None
    run_id: str | None = None


class RunSpec(Strict):
    dataset: DataSpec
    student: str
    method: str = "none"
    hparams: dict[str, Any] = Field(default_factory=dict)
    teacher: TeacherRef | None = None
    recipe: Recipe = Field(default_factory=Recipe)
    seed: NonNegativeInt = 0

    @property
    def run_id(self) -> str:
        return spec_hash(self.model_dump(mode="json"))

    def describe(self) -> str:
        pair = f"{self.teacher.model}→{self.student}" if self.teacher else self.student
        return f"{self.dataset.name} {pair} {self.method} seed={self.seed}"


def spec_hash(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
