"""The training loop. It knows nothing about any method: it asks the Method what it needs,
runs the teacher without gradients, runs the student, sums the Method's named loss terms,
steps, evaluates on val and test each epoch, logs every term and checkpoints.

Reproducibility: every epoch reseeds the global RNG from (seed, epoch) and shuffles with a
generator seeded the same way, so an interrupted run resumed from its last checkpoint
produces exactly the metrics of an uninterrupted one, and the same seed on the same CPU
gives identical metrics.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import records
from .checkpoints import atomic_torch_save, load_weights
from .data import DataSplits, create_dataset
from .errors import ConfigError, KDBenchError
from .method import Batch, Method, TrainContext, create_method
from .models import Backbone, ModelOutput, create_model
from .spec import Recipe, RunSpec

SPLIT_SEED = 0  # one validation split for every training seed, so model selection is comparable
CHECK_EVERY = 50  # steps between host syncs (non-finite loss check, progress display)


class TrainingDiverged(KDBenchError):
    """The loss became NaN or infinite."""


@dataclass
class EngineOptions:
    """How a run is executed; none of this changes what it computes, so none is in its id."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # data-loader processes; None: 0 on CPU, min(8, cores) on CUDA
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on CPU
    progress: bool = True
    subset: int | None = None  # use only the first N samples of each split (smoke runs)
    threads: int | None = None  # torch intra-op threads for a job (the runner shares the cores)
    # Called after each epoch's checkpoint with (epoch, metrics row); Optuna's pruning
    # raises from here. Runs in the training process.
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(recipe: Recipe, epoch: int, fraction: float) -> float:
    """The learning rate ``fraction`` of the way through ``epoch`` (counted from 1)."""
    progress = epoch - 1 + fraction
    if progress < recipe.warmup_epochs:
        return recipe.lr * (progress + 1e-3) / recipe.warmup_epochs
    if recipe.schedule == "step":
        # mdistiller decays once epoch > milestone, i.e. from epoch milestone + 1 on
        return recipe.lr * recipe.gamma ** sum(epoch > m for m in recipe.decay_epochs)
    if recipe.schedule == "cosine":
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress / recipe.epochs))
    return recipe.lr


class Indexed(Dataset):
    """Adds each sample's position in the training set (CRD's memory rows, and free)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: Backbone, loader: DataLoader, device: torch.device, keep_logits: bool = False) -> dict[str, Any]:
    model.eval()
    correct1 = correct5 = total = 0
    kept: list[Tensor] = []
    labels_kept: list[Tensor] = []
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images).logits.float()
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, total = correct1 + c1, correct5 + c5, total + len(labels)
        if keep_logits:
            kept.append(logits.half().cpu())
            labels_kept.append(labels.cpu())
    result: dict[str, Any] = {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}
    if keep_logits:
        result["logits"], result["labels"] = torch.cat(kept), torch.cat(labels_kept)
    return result


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _autocast(device: torch.device, enabled: bool) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_teacher(spec: RunSpec, num_classes: int, weights: Path | None, device: torch.device) -> Backbone | None:
    if spec.teacher is None:
        return None
    if weights is None:
        raise ConfigError(f"run '{spec.describe()}' names teacher {spec.teacher.model} but no weights for it")
    teacher = create_model(spec.teacher.model, num_classes=num_classes)
    load_weights(teacher, weights, what=f"teacher {spec.teacher.model}")
    return teacher.eval().requires_grad_(False).to(device)


def train_run(
    spec: RunSpec, run_dir: Path, options: EngineOptions | None = None, teacher_weights: Path | None = None
) -> dict[str, Any]:
    """Train one run into ``run_dir`` (resuming from its checkpoint) and return its record."""
    options = options or EngineOptions()
    run_dir = Path(run_dir)
    device = resolve_device(options.device)
    workers = options.workers if options.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    recipe = spec.recipe
    records.write_json(run_dir / records.SPEC, {"run_id": spec.run_id, "spec": spec.model_dump(mode="json")})

    seed_everything(spec.seed)
    data = open_data(spec, options, augment=recipe.augment)
    method = create_method(spec.method, **spec.hparams)
    needs = method.needs
    teacher = build_teacher(spec, data.num_classes, teacher_weights, device)
    if needs.teacher and teacher is None:
        raise ConfigError(f"method '{spec.method}' distils from a teacher, but run '{spec.describe()}' has none")
    student = create_model(spec.student, num_classes=data.num_classes).to(device)
    for model in (student, teacher):
        if model is not None:
            model.tap(needs.stages)

    eval_batch = max(recipe.batch_size, 256)
    val_loader = _loader(data.val, eval_batch, workers, device)
    test_loader = _loader(data.test, eval_batch, workers, device)
    method.setup(_context(spec, data, method, student, teacher, device, workers, options))
    method.to(device)

    optimizer = _optimizer(recipe, list(student.parameters()) + list(method.parameters()))
    autocast, scaler = _autocast(device, options.amp)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    checkpoint_path = run_dir / records.CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        records.write_metrics(run_dir, history)  # drop lines logged after the checkpoint

    teacher_test = evaluate(teacher, test_loader, device)["top1"] if teacher is not None else None
    train_set = Indexed(data.train)
    started = time.time()
    final_test: dict[str, Any] = {}
    for epoch in range(start_epoch, recipe.epochs + 1):
        seed_everything(spec.seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        loader = _loader(train_set, recipe.batch_size, workers, device, generator)
        epoch_start = time.perf_counter()
        terms, seen, step_seconds = _train_epoch(
            spec, epoch, loader, student, teacher, method, optimizer, scaler, autocast, device, options.progress
        )
        val = evaluate(student, val_loader, device) if len(data.val) else {"top1": float("nan"), "top5": float("nan")}
        test = evaluate(student, test_loader, device, keep_logits=epoch == recipe.epochs)
        history.append({
            "epoch": epoch,
            "lr": learning_rate(recipe, epoch, 0.0),
            **{f"loss_{k}": v for k, v in terms.items()},
            "val_top1": val["top1"], "val_top5": val["top5"],
            "test_top1": test["top1"], "test_top5": test["top5"],
            "images_per_s": seen / step_seconds if step_seconds > 0 else None,
            "epoch_seconds": time.perf_counter() - epoch_start,
        })
        atomic_torch_save(
            {
                "epoch": epoch,
                "student": student.state_dict(),
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "history": history,
            },
            checkpoint_path,
        )
        records.write_metrics(run_dir, history)
        if options.on_epoch is not None:
            options.on_epoch(epoch, history[-1])
        if options.progress:
            print(f"  epoch {epoch}/{recipe.epochs}: val {val['top1']:.2f}  test {test['top1']:.2f}", flush=True)
        final_test = test

    if not final_test:  # resumed after the last epoch had been checkpointed
        final_test = evaluate(student, test_loader, device, keep_logits=True)
    atomic_torch_save({"logits": final_test["logits"], "labels": final_test["labels"]}, run_dir / records.TEST_LOGITS)
    atomic_torch_save({"model": student.state_dict()}, run_dir / records.WEIGHTS)
    record = {
        "run_id": spec.run_id,
        "status": "finished",
        "spec": spec.model_dump(mode="json"),
        "summary": summarise(history, teacher_test),
        "parameters": {
            "student": count_parameters(student),
            "method": count_parameters(method),
            "teacher": sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
        },
        "timing": {
            "train_seconds": sum(r["epoch_seconds"] for r in history),
            "images_per_s": float(np.mean([r["images_per_s"] for r in history if r["images_per_s"]] or [0.0])),
            "wall_seconds_this_session": time.time() - started,
        },
        "environment": records.environment(device),
        "metrics": history,
    }
    records.write_json(run_dir / records.RECORD, record)
    checkpoint_path.unlink(missing_ok=True)  # the weights and record now hold everything
    return record


def summarise(history: list[dict[str, Any]], teacher_test: float | None) -> dict[str, Any]:
    """Both selection rules: the last epoch, and the epoch with the best val top-1."""
    last = history[-1]
    best = max(history, key=lambda r: (r["val_top1"] if not math.isnan(r["val_top1"]) else -1, -r["epoch"]))
    return {
        "test_top1_last": last["test_top1"],
        "test_top5_last": last["test_top5"],
        "best_val_epoch": best["epoch"],
        "val_top1_best": best["val_top1"],
        "test_top1_best_val": best["test_top1"],
        "test_top5_best_val": best["test_top5"],
        # the max over epochs of test accuracy, what mdistiller reports; optimistic, for comparison only
        "test_top1_max": max(r["test_top1"] for r in history),
        "teacher_test_top1": teacher_test,
    }


def _context(spec: RunSpec, data: DataSplits, method: Method, student: Backbone, teacher: Backbone | None,
             device: torch.device, workers: int, options: EngineOptions) -> TrainContext:
    probe_images = torch.stack([data.val[i][0] if len(data.val) else data.train[i][0] for i in range(2)]).to(device)
    probes = []
    for model in (student, teacher):
        if model is None:
            probes.append(None)
            continue
        was_training = model.training
        with torch.no_grad():
            probes.append(model.eval()(probe_images).detach())
        model.train(was_training)
    teacher_train_logits = None
    if method.needs.teacher_train_logits and teacher is not None:
        plain = open_data(spec, options, augment=False).train
        teacher_train_logits = _predict(teacher, _loader(plain, 256, workers, device), device)
    train_labels = torch.as_tensor(data.train_labels, dtype=torch.long)
    return TrainContext(data.num_classes, train_labels, spec.recipe.epochs, spec.seed, probes[0], probes[1],
                        teacher_train_logits)


def open_data(spec: RunSpec, options: EngineOptions, augment: bool) -> DataSplits:
    data = create_dataset(spec.dataset.name, options.data_root, seed=SPLIT_SEED,
                          val_fraction=spec.dataset.val_fraction, augment=augment, **spec.dataset.options)
    return _first(data, options.subset) if options.subset else data


def _first(data: DataSplits, n: int) -> DataSplits:
    def head(split: Dataset) -> Dataset:
        return Subset(split, range(min(n, len(split))))

    return replace(data, train=head(data.train), val=head(data.val), test=head(data.test),
                   train_labels=data.train_labels[:n])


@torch.no_grad()
def _predict(model: Backbone, loader: DataLoader, device: torch.device) -> Tensor:
    return torch.cat([model(images.to(device)).logits.float().cpu() for images, _ in loader])


def _optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _train_epoch(spec: RunSpec, epoch: int, loader: DataLoader, student: Backbone, teacher: Backbone | None,
                 method: Method, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 autocast: contextlib.AbstractContextManager, device: torch.device, show_progress: bool
                 ) -> tuple[dict[str, float], int, float]:
    student.train()
    method.train()
    sums: dict[str, Tensor] = {}
    seen = 0
    steps = len(loader)
    started = time.perf_counter()
    bar = _progress(loader, f"{spec.describe()} epoch {epoch}", show_progress)
    for step, (images, labels, index) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec.recipe, epoch, step / steps)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        index = index.to(device, non_blocking=True)
        with autocast:
            teacher_out = _teacher_forward(teacher, images)
            student_out = student(images)
            terms = method.loss(student_out, teacher_out, Batch(images, labels, index), epoch)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.detach().float() * len(labels)
        seen += len(labels)
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
            means = {name: float(total) / seen for name, total in sums.items()}
            if not all(math.isfinite(v) for v in means.values()):
                raise TrainingDiverged(
                    f"loss is not finite in epoch {epoch} at or before step {step + 1}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in means.items())
                )
            if show_progress:
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()}, refresh=False)
    seconds = time.perf_counter() - started
    return {name: float(total) / max(seen, 1) for name, total in sums.items()}, seen, seconds


def _teacher_forward(teacher: Backbone | None, images: Tensor) -> ModelOutput | None:
    if teacher is None:
        return None
    with torch.no_grad():
        return teacher(images)


def _progress(loader: DataLoader, description: str, enabled: bool) -> Iterator:
    if not enabled:
        return iter(loader)
    from tqdm.auto import tqdm

    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True)
