"""Streaming a run's per-epoch metrics to TensorBoard and Weights & Biases while it trains.

The JSON records stay the source of truth; a sink only mirrors each epoch's metrics row
(every loss term, val/test top-1 and top-5, learning rate, images/s, epoch seconds) and
never decides whether a run succeeded. Sinks, chosen by a suite's ``track:`` list or
``kdbench run/train --track``:

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` event files in the run's
  folder, under ``tensorboard/<dataset>/<teacher>-<student>/<label>/seed<k>``, so
  ``tensorboard --logdir results/<suite>`` shows every run named by dataset, pair, method
  label and seed. Tags: ``loss/<term>``, ``val/top1``, ``test/top5``, ``lr``, …
- ``wandb``: one W&B run per kdbench run (its id is the run id, its name as above, its
  group the suite, its config the spec), written under the run's folder, offline unless
  ``WANDB_MODE`` says otherwise (clusters without internet; ``wandb sync`` uploads later).

The step of every value is the epoch, and the run's folder notes the last epoch its sinks
received (``tracking.json``), so a resumed run continues its curves: its sinks first catch
up with the epochs the records hold and they lack (an epoch whose metrics were written
just before a kill), TensorBoard drops anything an interrupted attempt logged from there
on (``purge_step``), and W&B resumes the run of the same id. A run restarted from its first
epoch (its checkpoint unreadable) starts its curves again. Only the process that writes
the records (rank 0 under torchrun) logs. A run's sinks open at its first logged epoch in
a process and close after its last; a run that stops early (failed, pruned) is flushed
every epoch and closed at exit.

The method label comes from the suite's ``manifest.json`` beside the ``runs/`` folder
(``kdbench run`` writes it before training); a run outside a suite goes by its method.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import store
from ..errors import ConfigError
from ..spec import RunSpec

Sink = Literal["tensorboard", "wandb"]
SINKS: dict[str, tuple[str, str]] = {  # sink → (module to import, install command)
    "tensorboard": ("tensorboard", "pip install 'kdbench[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'kdbench[wandb]'  (or: pip install wandb)"),
}
TENSORBOARD_DIR = "tensorboard"
LOGGED = "tracking.json"  # in a run's folder: {"epoch": the last epoch its sinks received}
WANDB_PROJECT = "kdbench"


@dataclass(frozen=True)
class Tracking:
    """Where the runs of one ``kdbench run`` or ``train`` stream their metrics."""

    sinks: tuple[Sink, ...] = ()
    group: str | None = None  # the suite's name: W&B's group


def require(sinks: Sequence[str]) -> tuple[Sink, ...]:
    """The sinks, checked before any training: each is known and its package importable."""
    problems = []
    for sink in sinks:
        if sink not in SINKS:
            problems.append(f"unknown tracking sink '{sink}'; use one of {', '.join(SINKS)}")
        elif importlib.util.find_spec(SINKS[sink][0]) is None:
            problems.append(f"tracking with {sink} needs the {SINKS[sink][0]} package: {SINKS[sink][1]}")
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(dict.fromkeys(sinks))  # type: ignore[arg-type]


def run_name(spec: RunSpec, run_dir: Path) -> str:
    """``dataset/teacher-student/label/seed<k>``; label and pair are read from the suite's
    manifest (a student without distillation belongs to its suite's pair too)."""
    pair = f"{spec.teacher.model}→{spec.student}" if spec.teacher is not None else spec.student
    job = {"label": spec.method, "pair": pair}
    manifest = Path(run_dir).parent.parent / "manifest.json"
    if manifest.exists():
        jobs = {job["run_id"]: job for job in json.loads(manifest.read_text()).get("jobs", [])}
        job = jobs.get(spec.run_id, job)
    return f"{spec.dataset.name}/{job['pair'].replace('→', '-')}/{job['label']}/seed{spec.seed}"


def tag(key: str) -> str:
    """A metrics row's key as a tag: ``loss_ce`` → ``loss/ce``, ``val_top1`` → ``val/top1``."""
    for prefix in ("loss", "val", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key.removeprefix(prefix + '_')}"
    return key


class RunTracker:
    """The open sinks of one run."""

    def __init__(self, tracking: Tracking, spec: RunSpec, run_dir: Path, logged: int) -> None:
        self.logged = logged  # epochs the sinks hold
        first_epoch = logged + 1
        name = run_name(spec, run_dir)
        self.tensorboard = self.wandb = None
        if "tensorboard" in tracking.sinks:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR / name), purge_step=first_epoch)
        if "wandb" in tracking.sinks:
            import wandb

            self.wandb = wandb.init(project=WANDB_PROJECT, group=tracking.group, name=name, id=spec.run_id,
                                    dir=str(run_dir), config=spec.model_dump(mode="json"), resume="allow",
                                    mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")

    def log(self, row: dict[str, Any]) -> None:
        epoch = self.logged = row["epoch"]
        values = {tag(k): float(v) for k, v in row.items()
                  if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, global_step=epoch)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values | {"epoch": epoch}, step=epoch)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


_OPEN: dict[Path, RunTracker] = {}  # run folder → its open sinks, in this process


def log_epoch(tracking: Tracking | None, spec: RunSpec, run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Send a run's epochs that its sinks lack (the last one, after a resume also those
    before it) to its sinks; ``history`` is the run's metrics rows so far."""
    if tracking is None or not tracking.sinks:
        return
    run_dir = Path(run_dir)
    tracker = _OPEN.get(run_dir)
    if tracker is None:
        noted = run_dir / LOGGED
        logged = store.read_json(noted)["epoch"] if noted.exists() else 0
        tracker = _OPEN[run_dir] = RunTracker(tracking, spec, run_dir, logged=min(logged, len(history) - 1))
    for row in history[tracker.logged:]:
        tracker.log(row)
    store.write_json(run_dir / LOGGED, {"epoch": tracker.logged})
    if len(history) >= spec.recipe.epochs:
        _OPEN.pop(run_dir).close()


@atexit.register
def close_all() -> None:
    """Close the sinks of runs that stopped before their last epoch (failed, pruned)."""
    while _OPEN:
        _OPEN.popitem()[1].close()
