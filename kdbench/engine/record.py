"""The run's record: its spec, summary (both selection rules), parameter counts, timing,
environment and per-epoch metrics; with the final test logits and weights, written by
rank 0, after which the epoch checkpoint is no longer needed."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .. import store
from ..store.checkpoints import atomic_torch_save
from ..models import Backbone
from .evaluation import evaluate
from .options import Execution
from .trainee import Trainee


def finish_run(trainee: Trainee, teacher: Backbone | None, teacher_test: float | None,
               test_loader: DataLoader | None, execution: Execution, started: float,
               teacher_logits: dict[str, dict[str, torch.Tensor]] | None = None) -> store.RunRecord:
    """The run's record; rank 0 (``test_loader`` the whole test set) also writes its files,
    with ``teacher_logits`` (``teacher_outputs``) for a run that learned from the teacher."""
    folder = store.RunFolder(trainee.run_dir)
    if test_loader is not None:
        final = evaluate(trainee.model, test_loader, execution, keep_logits=True)
        atomic_torch_save({"logits": final["logits"], "labels": final["labels"]}, folder.test_logits)
        if teacher is not None and teacher_logits is not None:
            atomic_torch_save(teacher_logits, folder.teacher_logits)
        atomic_torch_save({"model": trainee.model.state_dict()}, folder.weights)
        for selection, state in trainee.best_weights.items():
            atomic_torch_save({"model": state}, folder.weights_at(selection))
    history = trainee.history
    environment = store.environment(execution.device)
    if distributed.active():
        environment.world_size = distributed.world()
    record = store.RunRecord(
        run_id=trainee.spec.run_id,
        status=store.RunStatus.FINISHED,
        spec=trainee.spec.model_dump(mode="json"),
        summary=store.Summary(**summarise(history, teacher_test)),
        parameters=store.Parameters(
            student=count_parameters(trainee.model),
            method=count_parameters(trainee.method),
            teacher=sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
        ),
        timing=store.Timing(
            train_seconds=sum(r["epoch_seconds"] for r in history),
            images_per_s=float(np.mean([r["images_per_s"] for r in history if r["images_per_s"]] or [0.0])),
            wall_seconds_this_session=time.time() - started,
        ),
        environment=environment,
        metrics=history,
    )
    if test_loader is not None:
        store.write_record(folder.path, record)  # and the epoch checkpoint goes: weights and record hold everything
    return record


def teacher_outputs(teacher: Backbone, splits: dict[str, DataLoader], execution: Execution
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """The teacher's float16 logits and labels on each split (``test``, ``val``), as its
    students' ``teacher_logits.pt`` keeps them: the report compares each student with
    them, and a teacher loaded from a checkpoint has no run folder of its own to hold them."""
    outputs = {}
    for name, loader in splits.items():
        result = evaluate(teacher, loader, execution, keep_logits=True)
        outputs[name] = {"logits": result["logits"], "labels": result["labels"]}
    return outputs


def summarise(history: list[dict[str, Any]], teacher_test: float | None) -> dict[str, Any]:
    """Both selection rules: the last epoch, and the first epoch with the best val top-1
    (none without a validation split: nothing to select on); and the best test epoch, the
    papers' rule, selected on test and so only for comparison with them."""
    last = history[-1]
    validated = [r for r in history if not math.isnan(r["val_top1"])]
    best = max(validated, key=lambda r: (r["val_top1"], -r["epoch"])) if validated else None
    best_test = max(history, key=lambda r: (r["test_top1"], -r["epoch"]))
    return {
        "test_top1_last": last["test_top1"],
        "test_top5_last": last["test_top5"],
        "best_val_epoch": best and best["epoch"],
        "val_top1_best": best and best["val_top1"],
        "test_top1_best_val": best and best["test_top1"],
        "test_top5_best_val": best and best["test_top5"],
        # the max over epochs of test accuracy, what mdistiller reports; optimistic, for comparison only
        "test_top1_max": best_test["test_top1"],
        "best_test_epoch": best_test["epoch"],
        "teacher_test_top1": teacher_test,
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
