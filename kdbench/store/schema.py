"""What the files of a results folder hold, as typed models.

Every file is written from one of these models (``dump``: its fields in declaration order,
only those that were set, so an optional field never given, such as the environment's
``world_size`` outside torchrun, is left out rather than written as null) and read back
into them by analysis. Readers are lenient: records written by older kdbench versions
lack some sections and fields, so everything a reader may find missing has a default, and
keys a model does not name are kept (``extra="allow"``).

A run's state in its folder is one ``RunStatus``; ``record.json`` says ``finished``,
``failed.json`` says ``failed``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class RunStatus(StrEnum):
    """Where a run stands, from the files of its folder (``status_of``)."""

    FINISHED = "finished"  # record.json
    FAILED = "failed"  # failed.json (not retried unless asked)
    PARTIAL = "partial"  # an epoch checkpoint to resume from
    NOT_STARTED = "not started"  # nothing yet
    CORRUPT = "corrupt"  # a record.json or failed.json that is not what kdbench writes


class Stored(BaseModel):
    """A file's content: unknown keys kept, written with only the fields that were set."""

    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        """The JSON object to write (Python values: NaN and None as they are)."""
        return self.model_dump(exclude_unset=True)


class MetricsRow(Stored):
    """One epoch of a run (a line of ``metrics.jsonl``, an entry of the record's ``metrics``).
    Its loss terms are stored flat, ``loss_<term>``, between ``lr`` and ``val_top1``, each
    the epoch's mean of that weighted term; val accuracies are NaN without a val split."""

    epoch: int
    lr: float
    losses: dict[str, float] = Field(default_factory=dict)
    val_top1: float
    val_top5: float
    test_top1: float
    test_top5: float
    images_per_s: float | None = None  # per student of a cohort; None for an epoch of no time
    epoch_seconds: float

    @model_validator(mode="before")
    @classmethod
    def _gather_losses(cls, row: Any) -> Any:
        if isinstance(row, dict) and "losses" not in row:
            losses = {key[len("loss_"):]: value for key, value in row.items() if key.startswith("loss_")}
            row = {key: value for key, value in row.items() if not key.startswith("loss_")} | {"losses": losses}
        return row

    @model_serializer(mode="wrap")
    def _flat_losses(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        losses = data.pop("losses", {})
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat[key] = value
            if key == "lr":
                flat.update({f"loss_{term}": loss for term, loss in losses.items()})
        return flat


class Summary(Stored):
    """Both selection rules over a run's epochs: the last one, and the best on val (None
    without a validation split); and the papers' best test epoch, for comparison only."""

    test_top1_last: float | None = None
    test_top5_last: float | None = None
    best_val_epoch: int | None = None
    val_top1_best: float | None = None
    test_top1_best_val: float | None = None
    test_top5_best_val: float | None = None
    test_top1_max: float | None = None  # the max over epochs (mdistiller's number), optimistic
    best_test_epoch: int | None = None  # where that max is (selected on test)
    teacher_test_top1: float | None = None


class Parameters(Stored):
    student: int | None = None
    method: int | None = None  # the method's own trainable modules
    teacher: int | None = None


class Timing(Stored):
    train_seconds: float | None = None
    images_per_s: float | None = None
    wall_seconds_this_session: float | None = None


class Environment(Stored):
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None
    device: str | None = None
    device_name: str | None = None
    host: str | None = None
    git_commit: str | None = None
    kdbench: str | None = None
    world_size: int | None = None  # set only under torchrun
    slurm_job: str | None = None  # SLURM_JOB_ID, set only in a Slurm job (a requeued job keeps its id)


class RunRecord(Stored):
    """``record.json``: a finished run (written last; its presence means finished)."""

    run_id: str
    status: Literal[RunStatus.FINISHED]
    spec: dict[str, Any]  # the RunSpec as JSON (``RunSpec.model_dump(mode="json")``)
    summary: Summary = Field(default_factory=Summary)
    parameters: Parameters = Field(default_factory=Parameters)
    timing: Timing = Field(default_factory=Timing)
    environment: Environment = Field(default_factory=Environment)
    metrics: list[MetricsRow] = Field(default_factory=list)


class Failure(Stored):
    """``failed.json``: why a run failed. ``traceback`` is None for a run that never
    started (its teacher failed, its worker process died)."""

    run_id: str
    status: Literal[RunStatus.FAILED]
    spec: dict[str, Any]
    error: str  # "<exception type>: <message>", or the scheduler's reason
    traceback: str | None = None
    time: str | None = None  # UTC, ISO 8601


class ManifestJob(Stored):
    """A run of the suite as the suite names it."""

    run_id: str
    label: str | None = None
    pair: str | None = None
    role: Literal["teacher", "student"] | None = None
    dataset: str | None = None
    seed: int | None = None
    depends_on: list[str] = Field(default_factory=list)


class Manifest(Stored):
    """``manifest.json`` of a suite folder: the suite's runs by label and pair, and what its
    report needs (selection rule, published numbers and their sources, the protocol's notes,
    reference label, controls)."""

    suite: str | None = None
    description: str | None = None
    source: str | None = None
    selection: str = "best_val"
    teacher_weights: str = "last"  # the epoch of a trained teacher its students learned from
    paper: dict[str, dict[str, float]] = Field(default_factory=dict)  # "dataset/teacher/student" → label → top-1
    sources: dict[str, str] = Field(default_factory=dict)  # label → where its published numbers come from
    paper_sources: dict[str, dict[str, str]] = Field(default_factory=dict)  # a number's own source, as ``paper``
    protocol_notes: list[str] = Field(default_factory=list)  # the suite's departures from the published protocol
    release_differences: dict[str, list[str]] = Field(default_factory=dict)  # method → Method.release_differences
    reference: str | None = None
    controls: dict[str, str] = Field(default_factory=dict)
    jobs: list[ManifestJob] = Field(default_factory=list)
