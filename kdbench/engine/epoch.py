"""One epoch of a cohort (``Cohort``: what ``cohort`` sets up for the epochs): its steps over
the epoch's batches, a check every ``CHECK_EVERY`` steps that the loss is finite, then, per
trainee, evaluation on val and test, the epoch's metrics row, the checkpoint and the
metrics file (rank 0), and the ``on_epoch`` hook."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import distributed
from .. import store
from ..data import DataSplits
from ..errors import KDBenchError
from ..method import Batch
from ..models import Backbone
from ..spec import RunSpec
from .tracking import log_epoch
from .batches import EpochBatches, to_device
from .checkpoint import save_checkpoint
from .evaluation import evaluate
from .options import Execution
from .schedule import learning_rate
from .step import StudentStack, cohort_step
from .trainee import Trainee

CHECK_EVERY = 50  # steps between host syncs (non-finite loss check, progress display)


class TrainingDiverged(KDBenchError):
    """The loss became NaN or infinite."""


@dataclass
class Cohort:
    """A cohort set up for its epochs."""

    lead: RunSpec  # a run with the cohort's teacher, if it has one: its data, seed and recipe are all runs'
    execution: Execution
    data: DataSplits
    teacher: Backbone | None
    teacher_test: float | None  # the teacher's test top-1
    trainees: dict[int, Trainee]  # by position in the cohort's specs
    failures: dict[int, Exception]  # the runs whose method, set-up or resume failed
    eval_batch: int
    val_loader: DataLoader | None
    test_loader: DataLoader  # this rank's shard
    stacks: list[StudentStack]


def train_epoch(cohort: Cohort, trainees: list[Trainee], epoch: int,
                batches: Iterator[tuple[Any, Tensor, Tensor, Tensor | None]], sampler: EpochBatches) -> None:
    """Step ``trainees`` over the epoch's batches (``sampler`` cut them); a trainee whose loss
    is not finite stops with ``TrainingDiverged``, and the epoch ends early once every
    trainee has stopped."""
    for trainee in trainees:
        trainee.model.train()
        trainee.method.train()
    execution = cohort.execution
    device = execution.device
    steps = len(sampler)
    bar = _progress(batches, steps, f"{trainees[0].spec.describe()} epoch {epoch}", execution.show_progress)
    for step, (images, labels, index, mixed_targets) in enumerate(bar):
        images, weak_images = images if isinstance(images, (tuple, list)) else (images, None)
        batch = Batch(to_device(images, execution), labels.to(device, non_blocking=True),
                      index.to(device, non_blocking=True),
                      mixed_targets=None if mixed_targets is None else mixed_targets.to(device, non_blocking=True),
                      weak_images=None if weak_images is None else to_device(weak_images, execution))
        check = (step + 1) % CHECK_EVERY == 0 or step + 1 == steps
        share = len(labels) / sampler.global_size(step) if distributed.active() else 1.0
        cohort_step(batch, cohort.teacher, trainees, epoch, step / steps, execution.autocast, share, cohort.stacks)
        for trainee in trainees:
            if check and trainee.error is None:
                try:
                    _check_finite(trainee, epoch, step)
                except TrainingDiverged as exc:
                    trainee.error = exc
        if all(t.error is not None for t in trainees):
            return
        if check and execution.show_progress:
            bar.set_postfix({k: f"{float(v) / t.seen:.3f}" for t in trainees[:1] for k, v in t.sums.items()}, refresh=False)


def end_epoch(cohort: Cohort, trainee: Trainee, epoch: int, seconds: float) -> None:
    """Evaluate the trainee, append the epoch's metrics row, checkpoint, and call ``on_epoch``."""
    execution, options = cohort.execution, cohort.execution.options
    val = (evaluate(trainee.model, cohort.val_loader, execution, reduce=True) if cohort.val_loader is not None
           else {"top1": math.nan, "top5": math.nan})
    test = evaluate(trainee.model, cohort.test_loader, execution, reduce=True)
    sums, seen = epoch_sums(trainee)
    trainee.history.append({
        "epoch": epoch,
        "lr": learning_rate(trainee.spec.recipe, epoch, 0.0),
        **{f"loss_{k}": v / max(seen, 1) for k, v in sums.items()},
        "val_top1": val["top1"], "val_top5": val["top5"],
        "test_top1": test["top1"], "test_top5": test["top5"],
        # a cohort's students share the epoch's time: images/s is per student
        "images_per_s": seen / seconds if seconds > 0 else None,
        "epoch_seconds": seconds,
    })
    keep_best_weights(trainee)
    if distributed.is_main():
        save_checkpoint(trainee, epoch)
        store.write_metrics(trainee.run_dir, trainee.history)
        log_epoch(options.tracking, trainee.spec, trainee.run_dir, trainee.history)
    try:
        if options.on_epoch is not None:
            options.on_epoch(epoch, trainee.history[-1])
    except Exception as exc:  # e.g. optuna.TrialPruned: this run stops, the cohort goes on
        trainee.error = exc
    if cohort.execution.show_progress:
        print(f"  {trainee.spec.method} epoch {epoch}/{trainee.spec.recipe.epochs}: "
              f"val {val['top1']:.2f}  test {test['top1']:.2f}", flush=True)


BEST_OF = {"best_val": "val_top1", "best_test": "test_top1"}  # a selection and the metric it maximises


def keep_best_weights(trainee: Trainee) -> None:
    """Copy the model when the last epoch is the first with the best val (test) top-1 so
    far: the epoch ``summarise`` selects."""
    *before, last = trainee.history
    for selection, metric in BEST_OF.items():
        if not math.isnan(last[metric]) and all(last[metric] > row[metric] for row in before
                                                if not math.isnan(row[metric])):
            trainee.best_weights[selection] = {k: v.detach().to("cpu", copy=True)
                                               for k, v in trainee.model.state_dict().items()}


def epoch_sums(trainee: Trainee) -> tuple[dict[str, float], int]:
    """The loss terms' sums and the samples seen so far this epoch, over all ranks."""
    if not distributed.active():
        return {name: float(total) for name, total in trainee.sums.items()}, trainee.seen
    device = next(trainee.model.parameters()).device
    local = torch.tensor([*(float(v) for v in trainee.sums.values()), trainee.seen], dtype=torch.float64)
    total = distributed.all_reduce_sum(local.to(device)).tolist()
    return dict(zip(trainee.sums, total[:-1])), int(total[-1])


def _check_finite(trainee: Trainee, epoch: int, step: int) -> None:
    sums, seen = epoch_sums(trainee)
    means = {name: total / seen for name, total in sums.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise TrainingDiverged(
            f"loss is not finite in epoch {epoch} at or before step {step + 1}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in means.items())
        )


def _progress(batches: Iterator, total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=description, leave=False, dynamic_ncols=True)
