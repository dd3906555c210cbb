"""One run's folder, ``<runs>/<run id>/``: the names of its files, writing and reading them,
its status, its lock.

The folder holds ``spec.json`` (written first), ``metrics.jsonl`` (one line per epoch,
appended as training goes), ``checkpoint.pt`` (the last epoch, for resume), ``weights.pt``
(the final model as ``{"model": state_dict}``, the mdistiller format; beside it
``weights_best_val.pt`` and ``weights_best_test.pt``, the model at those epochs, which a
suite's ``teacher_weights`` may hand to students), ``test_logits.pt``
(final test-set logits in float16 with labels, for spectra and fidelity),
``teacher_logits.pt`` (a run with a teacher: the teacher's logits and labels on the test
split and, where the data set has one, the validation split, as ``{"test": {"logits",
"labels"}, "val": {...}}``; the report measures fidelity and confusable classes on them)
and ``record.json`` (written
last and atomically: its presence means the run is finished), or ``failed.json`` (why it
failed). Beside the folder, ``<run id>.lock`` is held by the process training the run.

What is read back is checked (``read_run_file``): a ``record.json`` or ``failed.json`` cut
short or garbled is ``CorruptResultsFile``; the runner sets it aside (renamed, kept) and
does the run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from .checkpoints import atomic_write_bytes, safe_load, set_aside
from ..errors import CheckpointError, KDBenchError, explain_validation
from ..locking import exclusive_lock
from ..spec import RunSpec
from .schema import Environment, Failure, MetricsRow, RunRecord, RunStatus, Stored

RECORD = "record.json"
FAILED = "failed.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
# The model at the epoch of the best val / test top-1, for students that learn from those
# (``TeacherRef.weights``); written when the run finishes, as weights.pt.
BEST_WEIGHTS = {"best_val": "weights_best_val.pt", "best_test": "weights_best_test.pt"}
TEST_LOGITS = "test_logits.pt"
TEACHER_LOGITS = "teacher_logits.pt"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's files."""

    path: Path

    @classmethod
    def of(cls, runs: Path, run_id: str) -> RunFolder:
        return cls(Path(runs) / run_id)

    record = property(lambda self: self.path / RECORD)
    failure = property(lambda self: self.path / FAILED)
    spec = property(lambda self: self.path / SPEC)
    metrics = property(lambda self: self.path / METRICS)
    checkpoint = property(lambda self: self.path / CHECKPOINT)

    def weights_at(self, selection: str) -> Path:
        """The weights of the epoch ``selection`` names: ``last`` (weights.pt), ``best_val``
        or ``best_test``."""
        return self.path / BEST_WEIGHTS.get(selection, WEIGHTS)
    weights = property(lambda self: self.path / WEIGHTS)
    test_logits = property(lambda self: self.path / TEST_LOGITS)
    teacher_logits = property(lambda self: self.path / TEACHER_LOGITS)
    lock = property(lambda self: self.path.with_name(f"{self.path.name}.lock"))


# --- plain JSON ----------------------------------------------------------------------------

def write_json(path: Path, payload: dict[str, Any] | Stored) -> None:
    """``payload`` as indented JSON, replacing ``path`` atomically."""
    if isinstance(payload, Stored):
        payload = payload.dump()
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# --- what training writes --------------------------------------------------------------------

def write_spec(run_dir: Path, spec: RunSpec) -> None:
    write_json(RunFolder(Path(run_dir)).spec, {"run_id": spec.run_id, "spec": spec.model_dump(mode="json")})


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """The run's epochs so far (``MetricsRow``), replacing its ``metrics.jsonl``."""
    lines = (json.dumps(MetricsRow.model_validate(row).dump()) + "\n" for row in rows)
    atomic_write_bytes(RunFolder(Path(run_dir)).metrics, "".join(lines).encode())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics; a line cut short by a kill is ignored."""
    path = RunFolder(Path(run_dir)).metrics
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_record(run_dir: Path, record: RunRecord) -> None:
    """The finished run's ``record.json``; its epoch checkpoint goes, the weights and the
    record now holding everything."""
    folder = RunFolder(Path(run_dir))
    write_json(folder.record, record)
    folder.checkpoint.unlink(missing_ok=True)


def environment(device: torch.device) -> Environment:
    """Where the run trained: versions, device, host, the kdbench commit and the Slurm job."""
    from .. import __version__

    job = os.environ.get("SLURM_JOB_ID")
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=str(device),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                     else platform.processor() or platform.machine()),
        host=socket.gethostname(),
        git_commit=_git_commit(),
        kdbench=__version__,
        **({"slurm_job": job} if job else {}),
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_failure(run_dir: Path, spec: RunSpec, error: BaseException | str) -> None:
    """The run's ``failed.json``: the exception that ended it (with its traceback), or the
    runner's reason it could never run (its teacher failed, its worker died)."""
    is_exception = isinstance(error, BaseException)
    write_json(RunFolder(Path(run_dir)).failure, Failure(
        run_id=spec.run_id,
        status=RunStatus.FAILED,
        spec=spec.model_dump(mode="json"),
        error=f"{type(error).__name__}: {error}" if is_exception else error,
        traceback="".join(traceback.format_exception(error)) if is_exception else None,
        time=datetime.now(timezone.utc).isoformat(),
    ))


# --- reading back, checked -------------------------------------------------------------------

class CorruptResultsFile(KDBenchError):
    """A file of a results folder (a run's record.json or failed.json, a manifest) that is
    not what kdbench writes."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


# what every reader of a run's spec relies on, by key: (type, what it is)
_SPEC_FIELDS = {"dataset": dict, "method": str, "student": str, "seed": int}


def read_run_file(path: Path) -> RunRecord | Failure:
    """A run's ``record.json`` (``RunRecord``) or ``failed.json`` (``Failure``), checked to
    hold what readers use; ``CorruptResultsFile`` names the file and what is wrong with it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise CorruptResultsFile(path, "not text (binary garbage)") from None
    except json.JSONDecodeError as exc:
        raise CorruptResultsFile(path, f"not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}; "
                                   "cut short or overwritten)") from None
    if not isinstance(payload, dict):
        raise CorruptResultsFile(path, f"holds a JSON {type(payload).__name__}, not a run's record")
    model = RunRecord if path.name == RECORD else Failure
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        raise CorruptResultsFile(path, "not a run's record: " + explain_validation(
            exc, line=lambda p: f"{p.key} is missing" if p.kind == "missing" else f"{p.key}: {p.detail}",
            separator="; ")) from None
    spec = parsed.spec
    problems = [f"spec.{key} is missing" if key not in spec else f"spec.{key} is not a {kind.__name__}"
                for key, kind in _SPEC_FIELDS.items() if not isinstance(spec.get(key), kind)]
    if not problems and not isinstance(spec["dataset"].get("name"), str):
        problems.append("spec.dataset.name is missing")
    if not isinstance(spec.get("teacher", 0), (dict, type(None))):
        problems.append("spec.teacher is missing or not an object or null")
    if problems:
        raise CorruptResultsFile(path, "not a run's record: " + "; ".join(problems))
    return parsed


def finished_record(runs: Path, run_id: str) -> RunRecord | None:
    """The run's record, or None when it has none; a corrupt one is set aside."""
    path = RunFolder.of(runs, run_id).record
    if not path.exists():
        return None
    try:
        record = read_run_file(path)
    except CorruptResultsFile as exc:
        set_aside(path, str(exc))
        return None
    assert isinstance(record, RunRecord)  # a record.json is read as one
    return record


def corrupt_run_files(run_dir: Path) -> list[CorruptResultsFile]:
    """What is wrong with the run's record.json and failed.json, if either is corrupt."""
    problems = []
    folder = RunFolder(Path(run_dir))
    for path in (folder.record, folder.failure):
        try:
            if path.exists():
                read_run_file(path)
        except CorruptResultsFile as exc:
            problems.append(exc)
    return problems


def status_of(runs: Path, run_id: str) -> RunStatus:
    """Where the run stands (``RunStatus``); a corrupt record.json or failed.json makes it
    CORRUPT (the scheduler sets the file aside and redoes the run)."""
    folder = RunFolder.of(runs, run_id)
    if corrupt_run_files(folder.path):
        return RunStatus.CORRUPT
    if folder.record.exists():
        return RunStatus.FINISHED
    if folder.failure.exists():
        return RunStatus.FAILED
    if folder.checkpoint.exists():
        return RunStatus.PARTIAL
    return RunStatus.NOT_STARTED


def set_aside_unsound_weights(run_dir: Path) -> bool:
    """A finished run whose ``weights.pt`` is missing or cannot be read (a teacher that its
    students load) has its record and weights set aside, so that it is trained again;
    returns whether it had."""
    folder = RunFolder(Path(run_dir))
    weights, record = folder.weights, folder.record
    try:
        if not weights.exists():
            raise CheckpointError(f"checkpoint '{weights}' is missing")
        safe_load(weights)
    except CheckpointError as exc:
        if weights.exists():
            set_aside(weights, str(exc))
        set_aside(record, f"{record} has no sound weights ({exc})")
        return True
    return False


# --- the lock of a run in progress -------------------------------------------------------------

def run_lock(runs: Path, run_id: str) -> contextlib.AbstractContextManager[bool]:
    """Whether this process holds the run's exclusive lock (``<run id>.lock`` beside its
    folder) for the block; False when another process holds it (it is training the run).
    The lock dies with its process, even by SIGKILL."""
    return exclusive_lock(RunFolder.of(runs, run_id).lock, block=False)
