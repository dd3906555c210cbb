"""The training loop. It knows nothing about any method: it asks each Method what it needs,
runs the teacher without gradients, runs the student, sums the Method's named loss terms,
steps, evaluates on val and test each epoch, logs every term and checkpoints.

A loop trains a *cohort*: runs that share data set, teacher, seed and recipe and differ in
method, hyperparameters or student. They see one data stream and one teacher forward per
batch; a single run is a cohort of one. Each run keeps its own random stream, so a run
gets the same record in a cohort as alone.

Reproducibility: every epoch reseeds the data stream and each run's stream from (seed,
epoch), so a run resumed from its last checkpoint produces exactly the metrics of an
uninterrupted one, and the same seed on the same CPU gives identical metrics (with
``workers=0``; loader processes persist through a run and are seeded once, so with
``workers>0`` a resumed run augments differently from an uninterrupted one, and GPU
kernels are not bit-exact in general).

Data-parallel: launched by ``torchrun`` (``WORLD_SIZE`` > 1), the same loop trains each run
over all the ranks (see ``distributed``): the epoch's permutation is cut into global batches
of ``recipe.batch_size`` and rank r takes the r-th slice of each (``EpochBatches``), so the
ranks together see exactly the single-process batches; each rank's loss is weighted by its
share of the global batch and the gradients are summed, BatchNorm uses the global batch's
statistics, loss sums, sample counts and val/test accuracy counts are summed over ranks,
and only rank 0 writes the run's files. The record equals a single-process run's up to
floating-point rounding, except where random numbers are drawn (augmentation, CRD's
negatives: each rank has its own streams). State kept across samples is synchronised by
the method that keeps it (CRD's memory takes every rank's samples). A last partial
global batch is split as evenly as possible; if it holds fewer samples than there are
ranks it is dropped (only ever with several ranks).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import distributed, records
from .checkpoints import atomic_torch_save, load_weights, safe_load, set_aside
from .data import DataSplits, create_dataset
from .data.base import Augment, BatchCrop, BatchResizedCrop, ImageDataset, RaggedImages
from .errors import CheckpointError, ConfigError, KDBenchError, MachineError
from .method import Batch, Method, TrainContext, ViewOutputs, create_method
from .models import Backbone, ModelOutput, create_model
from .models.stacked import StackedForward
from .spec import Recipe, RunSpec
from .tracking import Tracking, log_epoch

SPLIT_SEED = 0  # one validation split for every training seed, so model selection is comparable
CHECK_EVERY = 50  # steps between host syncs (non-finite loss check, progress display)


class TrainingDiverged(KDBenchError):
    """The loss became NaN or infinite."""


@dataclass
class EngineOptions:
    """How runs are executed; none of this changes what they compute, so none is in their id."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # data-loader processes; None: 0 on CPU, min(8, cores) on CUDA
    # Mixed precision: None on CUDA only (bf16 where supported, else fp16 with a GradScaler);
    # True on the CPU too (bf16 autocast: the tests run the path there), False off.
    amp: bool | None = None
    amp_dtype: Literal["bfloat16", "float16"] | None = None  # None: bf16 unless a GPU lacks it
    channels_last: bool | None = None  # NHWC models and batches: None on CUDA only, True on the CPU too
    compile: bool = False  # torch.compile the student (CUDA; slow to start, faster to run)
    # Keep a training set held as pixels (the built-in sets, CIFAR-100, a prepared store) on
    # the device and augment whole batches there instead of in loader processes; None: on
    # CUDA only.
    device_data: bool | None = None
    progress: bool = True
    subset: int | None = None  # use only the first N samples of each split (smoke runs)
    threads: int | None = None  # torch intra-op threads for a job (the runner shares the cores)
    # Step a cohort's students of one architecture as one vmapped network (models.stacked):
    # for GPUs that small students leave idle; slower on a CPU. Records equal the separate
    # runs' up to float rounding instead of exactly. Not with compile or torchrun.
    stack_students: bool = False
    # Called after each epoch's checkpoint with (epoch, metrics row); Optuna's pruning
    # raises from here. Runs in the training process.
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None
    tracking: Tracking | None = None  # TensorBoard / W&B sinks of each epoch's metrics (kdbench.tracking)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MachineError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu "
                           "or a machine with a GPU")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of a random stream in an epoch: 0 shuffles, 1 augments, 2 is the run's own."""
    return (seed * 100_003 + epoch) * 3 + stream


class RngStream:
    """A private torch random stream: ``with stream.active():`` swaps it in for the global
    one and keeps where it got to, so interleaved users do not disturb each other."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device if device.type == "cuda" else None
        with torch.random.fork_rng(devices=[self.device] if self.device else []):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self) -> tuple[Tensor, Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device else None

    def _set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.device:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outer)


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
    """Adds each sample's position in the training set (CRD's memory rows, and free) and,
    with ``second`` (the same samples under another transform), a second view: the image
    is then the pair (view, second view).

    Every item first draws a seed from the data stream, and the second view is drawn from
    that seed alone, so the first views (and the items after) are the same whether a
    second view is asked for or not: a run sees the same images alone as in a cohort with
    a method that needs two views."""

    def __init__(self, dataset: Dataset, second: Dataset | None = None) -> None:
        self.dataset, self.second = dataset, second

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor | tuple[Tensor, Tensor], int, int]:
        view_seed = int(torch.randint(2**62, ()))
        image, label = self.dataset[index]
        if self.second is None:
            return image, label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed)
            second, _ = self.second[index]
        return (image, second), label, index


class EpochBatches(Sampler[list[int]]):
    """One epoch's batches of this rank: a permutation drawn from ``seed``, cut into global
    batches of ``batch_size``, of which rank ``rank`` of ``world`` takes its slice, so the
    union over ranks of batch b is the single-process batch b. The last, partial batch is
    split as evenly as possible, and dropped if it has fewer samples than there are ranks."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest >= self.world)

    def global_size(self, step: int) -> int:
        """Samples in global batch ``step`` (counted from 0), over all ranks."""
        return min(self.batch_size, self.size - step * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()
        for step in range(len(self)):
            chunk = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield chunk[self.rank * len(chunk) // self.world:(self.rank + 1) * len(chunk) // self.world]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: Backbone, loader: DataLoader, device: torch.device, keep_logits: bool = False,
             reduce: bool = False) -> dict[str, Any]:
    """Top-1 and top-5 accuracy in %; ``reduce``: counted over the shards of all ranks."""
    model.eval()
    correct1 = correct5 = total = 0
    kept: list[Tensor] = []
    labels_kept: list[Tensor] = []
    for images, labels in loader:
        images, labels = _to_device(images, device), labels.to(device, non_blocking=True)
        logits = model(images).logits.float()
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, total = correct1 + c1, correct5 + c5, total + len(labels)
        if keep_logits:
            kept.append(logits.half().cpu())
            labels_kept.append(labels.cpu())
    if reduce and distributed.active():
        counts = torch.tensor([correct1, correct5, total], dtype=torch.float64, device=device)
        correct1, correct5, total = (int(c) for c in distributed.all_reduce_sum(counts).tolist())
    result: dict[str, Any] = {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}
    if keep_logits:
        result["logits"], result["labels"] = torch.cat(kept), torch.cat(labels_kept)
    return result


def _to_device(images: Tensor, device: torch.device, channels_last: bool | None = None) -> Tensor:
    images = images.to(device, non_blocking=True)
    nhwc = device.type == "cuda" if channels_last is None else channels_last
    return images.contiguous(memory_format=torch.channels_last) if nhwc else images


def _channels_last(options: EngineOptions, device: torch.device) -> bool:
    return device.type == "cuda" if options.channels_last is None else options.channels_last


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """An evaluation loader: in order, no augmentation beyond the split's transform."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")


@dataclass
class ResidentTrainSet:
    """A training set held as pixels on the device, augmented a whole batch at a time there
    (the recipe's ``batch``): no loader processes, no host-to-device copies per step."""

    images: Tensor | RaggedImages  # uint8 on the device: N×C×H×W, or a prepared store's images
    labels: Tensor
    transform: BatchCrop | BatchResizedCrop
    augment: bool
    weak_view: bool = False  # also a second, standard-augmented view of every image

    @classmethod
    def of(cls, data: DataSplits, augment: Augment | bool, device: torch.device,
           weak_view: bool = False) -> ResidentTrainSet | None:
        """The set on ``device``, or None when it is not held as uint8 pixels, or when
        its augmentation is "strong" (RandAugment + Cutout run per image, in the loader)."""
        train = data.train
        if (not isinstance(train, ImageDataset) or data.transforms is None or data.transforms.batch is None
                or augment == "strong"):
            return None
        images = train.resident(device)
        if images is None:
            return None
        augmented = augment if isinstance(augment, bool) else augment == "standard"
        return cls(images, train.labels.to(device), data.transforms.batch, augmented, weak_view)

    def batches(self, sampler: EpochBatches, stream: RngStream
                ) -> Iterator[tuple[Tensor | tuple[Tensor, Tensor], Tensor, Tensor]]:
        """Each batch's images (with ``weak_view``: the pair of views, the second drawn from
        its own seed as ``Indexed`` does per item), labels and indices."""
        device = self.images.device
        for indices in sampler:
            index = torch.as_tensor(indices)  # a store's images are cut with host-side bounds
            with stream.active():
                view_seed = int(torch.randint(2**62, ()))
                images = self.transform(self.images[index], self.augment)
            if self.weak_view:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(view_seed)
                    images = (images, self.transform(self.images[index], self.augment))
            yield images, self.labels[index], index


def _device_data(options: EngineOptions, device: torch.device) -> bool:
    return options.device_data if options.device_data is not None else device.type == "cuda"


def _shard(dataset: Dataset) -> Dataset:
    """This rank's contiguous part of an evaluation split (all of it in a single process)."""
    if not distributed.active():
        return dataset
    n, rank, world = len(dataset), distributed.rank(), distributed.world()
    return Subset(dataset, range(rank * n // world, (rank + 1) * n // world))


def _autocast(device: torch.device, enabled: bool | None, dtype: str | None = None
              ) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """A factory of autocast contexts, and whether fp16 gradients need a GradScaler;
    ``enabled`` None: on CUDA only."""
    if not (device.type == "cuda" if enabled is None else enabled):
        return contextlib.nullcontext, False
    if dtype is not None:
        chosen = getattr(torch, dtype)
    else:
        chosen = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast(device.type, dtype=chosen)), chosen == torch.float16


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


def open_data(spec: RunSpec, options: EngineOptions, augment: Augment | bool) -> DataSplits:
    data = create_dataset(spec.dataset.name, options.data_root, seed=SPLIT_SEED,
                          val_fraction=spec.dataset.val_fraction, augment=augment, **spec.dataset.options)
    return _first(data, options.subset) if options.subset else data


def _first(data: DataSplits, n: int) -> DataSplits:
    def head(split: Dataset) -> Dataset:
        return Subset(split, range(min(n, len(split))))

    return replace(data, train=head(data.train), val=head(data.val), test=head(data.test),
                   train_labels=data.train_labels[:n])


def cohort_key(spec: RunSpec) -> str:
    """Runs with equal keys and at most one teacher between them can train as one cohort."""
    shared = spec.model_dump(mode="json", include={"dataset", "seed", "recipe"})
    return repr(sorted(shared.items()))


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

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1

    def checkpoint(self, epoch: int) -> None:
        atomic_torch_save({
            "epoch": epoch,
            "student": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history,
        }, self.run_dir / records.CHECKPOINT)

    def resume(self, device: torch.device) -> None:
        """Go on from the last epoch's checkpoint; a checkpoint that cannot be read is set
        aside (kept, renamed) and the run starts from its first epoch."""
        path = self.run_dir / records.CHECKPOINT
        if not path.exists():
            return
        try:
            state = safe_load(path, map_location=device)
            lacking = {"student", "method", "optimizer", "history"} - set(state if isinstance(state, dict) else ())
            if lacking:
                raise CheckpointError(f"checkpoint '{path}' is not a kdbench checkpoint: it lacks {sorted(lacking)}")
        except CheckpointError as exc:
            if distributed.is_main():
                set_aside(path, str(exc))
            return
        self.model.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]
        if distributed.is_main():
            records.write_metrics(self.run_dir, self.history)  # drop lines logged after the checkpoint


def train_run(spec: RunSpec, run_dir: Path, options: EngineOptions | None = None,
              teacher_weights: Path | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` (resuming from its checkpoint) and return its record."""
    result = train_cohort([spec], [run_dir], options, teacher_weights)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def train_cohort(specs: Sequence[RunSpec], run_dirs: Sequence[Path], options: EngineOptions | None = None,
                 teacher_weights: Path | None = None) -> list[dict[str, Any] | BaseException]:
    """Train runs that share data, seed, recipe and teacher together; each result is the
    run's record, or the exception that ended it (the others go on)."""
    options = options or EngineOptions()
    teachers = {s.teacher for s in specs if s.teacher is not None}
    if len({cohort_key(s) for s in specs}) != 1 or len(teachers) > 1:
        raise ValueError("a cohort's runs must share data set, seed, recipe and teacher")
    lead = next((s for s in specs if s.teacher is not None), specs[0])
    recipe = lead.recipe
    device = distributed.setup(resolve_device(options.device))
    if recipe.batch_size % distributed.world():
        raise ConfigError(f"batch size {recipe.batch_size} does not divide among {distributed.world()} processes")
    workers = options.workers if options.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    for spec, run_dir in zip(specs, run_dirs) if distributed.is_main() else ():
        records.write_json(Path(run_dir) / records.SPEC, {"run_id": spec.run_id, "spec": spec.model_dump(mode="json")})

    seed_everything(lead.seed)
    data = open_data(lead, options, augment=recipe.augment)
    # a run whose method, set-up or resume fails fails alone (its exception is its result)
    failures: dict[int, Exception] = {}
    methods: dict[int, Method] = {}
    for i, spec in enumerate(specs):
        try:
            methods[i] = create_method(spec.method, **spec.hparams)
        except Exception as exc:
            failures[i] = exc
    teacher = build_teacher(lead, data.num_classes, teacher_weights, device)
    if teacher is not None:
        teacher.tap(sorted({stage for m in methods.values() if m.needs.teacher for stage in m.needs.teacher_stages}))
        if _channels_last(options, device):
            teacher.to(memory_format=torch.channels_last)
    eval_batch = max(recipe.batch_size, 256)
    val_loader = _loader(_shard(data.val), eval_batch, workers, device) if len(data.val) else None
    test_loader = _loader(_shard(data.test), eval_batch, workers, device)
    autocast, _ = _autocast(device, options.amp, options.amp_dtype)
    teacher_train_logits = None
    if teacher is not None and any(m.needs.teacher_train_logits for m in methods.values()):
        teacher_train_logits = _predict(teacher, _loader(open_data(lead, options, augment=False).train, eval_batch, workers, device), device)

    ready: dict[int, Trainee] = {}
    probe = torch.stack([data.train[i][0] for i in range(2)])  # shapes for the methods' setup
    context = partial(TrainContext, data.num_classes, torch.as_tensor(data.train_labels, dtype=torch.long),
                      recipe.epochs, lead.seed, teacher_train_logits=teacher_train_logits)
    for i, method in methods.items():
        try:
            trainee = make_trainee(specs[i], Path(run_dirs[i]), method, data.num_classes, teacher, probe, context,
                                   device, options)
            trainee.resume(device)
            distributed.broadcast_state(trainee.model)
            distributed.broadcast_state(trainee.method)
        except torch.OutOfMemoryError:
            raise  # the cohort's, not the run's: it may fit in smaller ones (runs.ensure_runs)
        except Exception as exc:
            failures[i] = exc
        else:
            ready[i] = trainee
    trainees = list(ready.values())
    stacks = student_stacks(trainees, data.num_classes, options)

    teacher_test = evaluate(teacher, test_loader, device, reduce=True)["top1"] if teacher is not None else None
    weak_view = any(t.method.needs.weak_view for t in trainees)
    train_set = Indexed(data.train, _weak_view(data, recipe.augment) if weak_view else None)
    resident = (ResidentTrainSet.of(data, recipe.augment, device, weak_view) if _device_data(options, device)
                else None)
    mixer = _mixer(recipe, data.num_classes)
    sampler = EpochBatches(len(train_set), recipe.batch_size, 0, distributed.rank(), distributed.world())
    # Loader processes live as long as the run (their start-up is paid once); they are
    # seeded from the data stream of the first epoch trained in this process.
    loader = None if resident is not None else DataLoader(
        train_set, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    started = time.time()
    for epoch in range(min((t.next_epoch for t in trainees), default=recipe.epochs + 1), recipe.epochs + 1):
        active = [t for t in trainees if t.error is None and t.next_epoch == epoch]
        if not active:
            continue
        for trainee in active:
            trainee.rng = RngStream(distributed.rank_seed(epoch_seed(lead.seed, epoch, 2)), device)
            trainee.sums, trainee.seen = {}, 0
        data_stream = RngStream(distributed.rank_seed(epoch_seed(lead.seed, epoch, 1)), device)
        sampler.seed = epoch_seed(lead.seed, epoch, 0)
        batches = resident.batches(sampler, data_stream) if resident is not None else _loader_batches(loader, data_stream)
        batches = _mixed(batches, mixer, data_stream)
        epoch_start = time.perf_counter()
        _train_epoch(epoch, batches, sampler, teacher, active, stacks, autocast, device,
                     options.progress and distributed.is_main(), _channels_last(options, device))
        epoch_seconds = time.perf_counter() - epoch_start
        for trainee in active:
            if trainee.error is None:
                _end_epoch(trainee, epoch, epoch_seconds / len(active), val_loader, test_loader, device, options)
    final_loader = _loader(data.test, eval_batch, workers, device) if distributed.is_main() else None
    results = [failures[i] if i in failures else ready[i].error if ready[i].error is not None else
               _finish(ready[i], *((teacher, teacher_test) if ready[i].method.needs.teacher else (None, None)),
                       final_loader, device, started)
               for i in range(len(specs))]
    distributed.barrier()  # the other ranks read rank 0's files (a teacher's weights) only once they are written
    return results


def _weak_view(data: DataSplits, augment: Augment) -> Dataset:
    """The second view of the training images for methods that ``needs.weak_view``: the
    standard recipe's (no augmentation when the recipe has none)."""
    level = "none" if augment == "none" else "standard"
    if isinstance(data.train, Subset):  # a smoke run's first samples (``_first``)
        return Subset(replace(data, train=data.train.dataset).train_view(level), data.train.indices)
    return data.train_view(level)


def _mixer(recipe: Recipe, num_classes: int) -> Any:
    """timm's Mixup at the recipe's α, whole batches, label smoothing 0; None without mixing."""
    if not recipe.mixes:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, label_smoothing=0.0,
                 num_classes=num_classes)


def _mixed(batches: Iterator[tuple[Any, Tensor, Tensor]], mixer: Any, stream: RngStream
           ) -> Iterator[tuple[Any, Tensor, Tensor, Tensor | None]]:
    """The batches with their mixed targets (None without mixing). Under mixup / CutMix each
    batch's images are mixed in place, the same for every run of a cohort; timm draws from
    numpy's generator, which is seeded for each batch from the data stream and then put back.
    timm pairs a batch with its reverse and takes only even sizes: an odd last sample keeps
    its image and its one-hot target."""
    for images, labels, index in batches:
        if mixer is None:
            yield images, labels, index, None
            continue
        with stream.active():
            seed = int(torch.randint(2**32, ()))
        even = len(labels) - len(labels) % 2
        outer = np.random.get_state()
        np.random.seed(seed)
        try:
            _, targets = mixer(images[:even], labels[:even])  # mixes the view, so ``images``, in place
        finally:
            np.random.set_state(outer)
        rest = torch.nn.functional.one_hot(labels[even:], mixer.num_classes).to(targets)
        yield images, labels, index, torch.cat([targets, rest])


def _train_epoch(epoch: int, batches: Iterator[tuple[Any, Tensor, Tensor, Tensor | None]], sampler: EpochBatches,
                 teacher: Backbone | None, trainees: list[Trainee], stacks: list[StudentStack],
                 autocast: Callable[[], contextlib.AbstractContextManager], device: torch.device,
                 show_progress: bool, channels_last: bool | None = None) -> None:
    for trainee in trainees:
        trainee.model.train()
        trainee.method.train()
    steps = len(sampler)
    bar = _progress(batches, steps, f"{trainees[0].spec.describe()} epoch {epoch}", show_progress)
    for step, (images, labels, index, mixed_targets) in enumerate(bar):
        images, weak_images = images if isinstance(images, (tuple, list)) else (images, None)
        batch = Batch(_to_device(images, device, channels_last), labels.to(device, non_blocking=True),
                      index.to(device, non_blocking=True),
                      mixed_targets=None if mixed_targets is None else mixed_targets.to(device, non_blocking=True),
                      weak_images=None if weak_images is None else _to_device(weak_images, device, channels_last))
        check = (step + 1) % CHECK_EVERY == 0 or step + 1 == steps
        share = len(labels) / sampler.global_size(step) if distributed.active() else 1.0
        cohort_step(batch, teacher, trainees, epoch, step / steps, autocast, share, stacks)
        for trainee in trainees:
            if check and trainee.error is None:
                try:
                    _check_finite(trainee, epoch, step)
                except TrainingDiverged as exc:
                    trainee.error = exc
        if all(t.error is not None for t in trainees):
            return
        if check and show_progress:
            bar.set_postfix({k: f"{float(v) / t.seen:.3f}" for t in trainees[:1] for k, v in t.sums.items()}, refresh=False)


def cohort_step(batch: Batch, teacher: Backbone | None, trainees: Sequence[Trainee], epoch: int, fraction: float,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                share: float = 1.0, stacks: Sequence[StudentStack] = ()) -> None:
    """One optimisation step of every trainee on one batch, with one teacher forward;
    ``share``: this rank's fraction of the global batch (1 in a single process); the
    trainees of each of ``stacks`` step as one network."""
    live = {id(t) for t in trainees if t.error is None}
    teacher_out = teacher_weak = None
    if teacher is not None and any(t.error is None and t.method.needs.teacher for t in trainees):
        with torch.no_grad(), autocast():
            teacher_out = teacher(batch.images)
            if batch.weak_images is not None and any(t.error is None and t.method.needs.teacher
                                                     and t.method.needs.weak_view for t in trainees):
                teacher_weak = teacher(batch.weak_images)
    stepped = set()
    for stack in stacks:
        members = [t for t in stack.trainees if id(t) in live]
        stepped.update(id(t) for t in _stacked_step(stack, members, batch, teacher_out, epoch, fraction, autocast))
    for trainee in trainees:
        if trainee.error is not None or id(trainee) in stepped:
            continue
        try:
            with trainee.rng.active():
                _step(trainee, batch, teacher_out, epoch, fraction, autocast, share, teacher_weak)
        except Exception as exc:  # one run failing must not stop its cohort
            trainee.error = exc
    out_of_memory = [t.error for t in trainees if id(t) in live and isinstance(t.error, torch.OutOfMemoryError)]
    if out_of_memory and len(live) > 1:  # not the run's failure: the cohort may fit in smaller ones (runs.ensure_runs)
        raise out_of_memory[0]


def _loader_batches(loader: DataLoader, stream: RngStream) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """An epoch of the loader's batches, drawn with the data stream (augmentation in this
    process, or the seeds of new loader processes)."""
    with stream.active():
        iterator = iter(loader)
    while True:
        with stream.active():
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def _step(trainee: Trainee, batch: Batch, teacher_out: ModelOutput | None, epoch: int, fraction: float,
          autocast: Callable[[], contextlib.AbstractContextManager], share: float = 1.0,
          teacher_weak: ModelOutput | None = None) -> None:
    """One step of one trainee; ``teacher_weak``: the teacher's outputs on the batch's weak
    view, for a method that ``needs.weak_view`` (its student sees that view first, as in
    MLKD's code, which matters only to BatchNorm's running statistics)."""
    _set_learning_rate(trainee, epoch, fraction)
    params = [p for group in trainee.optimizer.param_groups for p in group["params"]]
    try:
        with autocast():
            if trainee.method.needs.weak_view:
                if batch.weak_images is None:
                    raise KDBenchError(f"method '{trainee.spec.method}' needs a weak view but the batch has none")
                batch = replace(batch, weak=ViewOutputs(trainee.model(batch.weak_images),
                                                        teacher_weak if trainee.method.needs.teacher else None))
            terms = _loss_terms(trainee, trainee.model(batch.images), teacher_out, batch, epoch)
        loss = sum(terms.values())
        if distributed.active():
            loss = loss * share  # summed over ranks, the gradient is the global batch's
        trainee.optimizer.zero_grad(set_to_none=True)
        _scaled(trainee, loss).backward()
    except Exception:
        distributed.sum_gradients(params, failed=True)  # the other ranks learn of it and stop too
        raise
    if distributed.sum_gradients(params):
        raise KDBenchError("the step failed on another process")
    _update(trainee, terms, len(batch.labels))


@dataclass
class StudentStack:
    """Trainees with students of one architecture, stepped as one vmapped network
    (``models.stacked``); ``forward`` is None once the models turned out not to vmap."""

    forward: StackedForward | None
    trainees: list[Trainee]


def student_stacks(trainees: Sequence[Trainee], num_classes: int, options: EngineOptions) -> list[StudentStack]:
    """The cohort's students grouped by architecture, when ``options.stack_students``."""
    if not options.stack_students or options.compile or distributed.active():
        return []
    groups: dict[str, list[Trainee]] = {}
    for trainee in trainees:
        if not trainee.method.needs.weak_view:  # two views per step: these step alone
            groups.setdefault(trainee.spec.student, []).append(trainee)
    return [StudentStack(StackedForward(name, num_classes, sorted({s for t in group for s in t.method.needs.stages})),
                         group)
            for name, group in groups.items() if len(group) > 1]


def _stacked_step(stack: StudentStack, members: list[Trainee], batch: Batch, teacher_out: ModelOutput | None,
                  epoch: int, fraction: float, autocast: Callable[[], contextlib.AbstractContextManager]
                  ) -> list[Trainee]:
    """One step of ``members``, trainees of the stack: one forward, each method's loss (in
    the trainee's random stream), one backward of the sum (each loss reaches only its own
    student), each optimizer's step. Returns the trainees it stepped: none when fewer
    than two are given, or when the models cannot be vmapped (they step alone from then)."""
    if stack.forward is None or len(members) < 2:
        return []
    try:
        with autocast():
            outputs = stack.forward([t.model for t in members], batch.images)
    except Exception as exc:  # e.g. a random layer, which vmap refuses
        warnings.warn(f"{members[0].spec.student} students cannot be stacked, so they step one by one: {exc}",
                      stacklevel=2)
        stack.forward = None
        return []
    live, all_terms = [], []
    for trainee, output in zip(members, outputs):
        _set_learning_rate(trainee, epoch, fraction)
        try:
            with trainee.rng.active(), autocast():
                all_terms.append(_loss_terms(trainee, output, teacher_out, batch, epoch))
            live.append(trainee)
        except Exception as exc:
            trainee.error = exc
    for trainee in live:
        trainee.optimizer.zero_grad(set_to_none=True)
    try:
        if live:
            sum(_scaled(t, sum(terms.values())) for t, terms in zip(live, all_terms)).backward()
    except Exception as exc:
        for trainee in live:
            trainee.error = exc
        return members
    for trainee, terms in zip(live, all_terms):
        _update(trainee, terms, len(batch.labels))
    return members


def _set_learning_rate(trainee: Trainee, epoch: int, fraction: float) -> None:
    for group in trainee.optimizer.param_groups:
        group["lr"] = learning_rate(trainee.spec.recipe, epoch, fraction)


def _loss_terms(trainee: Trainee, student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Batch,
                epoch: int) -> dict[str, Tensor]:
    return trainee.method.loss(student_out, teacher_out if trainee.method.needs.teacher else None, batch, epoch)


def _scaled(trainee: Trainee, loss: Tensor) -> Tensor:
    return trainee.scaler.scale(loss) if trainee.scaler is not None else loss


def _update(trainee: Trainee, terms: dict[str, Tensor], n: int) -> None:
    """The optimizer's step on the gradients in place, and the epoch's loss sums."""
    if trainee.scaler is not None:
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
    else:
        trainee.optimizer.step()
    for name, value in terms.items():
        trainee.sums[name] = trainee.sums.get(name, 0) + value.detach().float() * n
    trainee.seen += n


def _epoch_sums(trainee: Trainee) -> tuple[dict[str, float], int]:
    """The loss terms' sums and the samples seen so far this epoch, over all ranks."""
    if not distributed.active():
        return {name: float(total) for name, total in trainee.sums.items()}, trainee.seen
    device = next(trainee.model.parameters()).device
    local = torch.tensor([*(float(v) for v in trainee.sums.values()), trainee.seen], dtype=torch.float64)
    total = distributed.all_reduce_sum(local.to(device)).tolist()
    return dict(zip(trainee.sums, total[:-1])), int(total[-1])


def _check_finite(trainee: Trainee, epoch: int, step: int) -> None:
    sums, seen = _epoch_sums(trainee)
    means = {name: total / seen for name, total in sums.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise TrainingDiverged(
            f"loss is not finite in epoch {epoch} at or before step {step + 1}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in means.items())
        )


def _end_epoch(trainee: Trainee, epoch: int, seconds: float, val_loader: DataLoader | None, test_loader: DataLoader,
               device: torch.device, options: EngineOptions) -> None:
    val = (evaluate(trainee.model, val_loader, device, reduce=True) if val_loader is not None
           else {"top1": math.nan, "top5": math.nan})
    test = evaluate(trainee.model, test_loader, device, reduce=True)
    sums, seen = _epoch_sums(trainee)
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
    if distributed.is_main():
        trainee.checkpoint(epoch)
        records.write_metrics(trainee.run_dir, trainee.history)
        log_epoch(options.tracking, trainee.spec, trainee.run_dir, trainee.history)
    try:
        if options.on_epoch is not None:
            options.on_epoch(epoch, trainee.history[-1])
    except Exception as exc:  # e.g. optuna.TrialPruned: this run stops, the cohort goes on
        trainee.error = exc
    if options.progress and distributed.is_main():
        print(f"  {trainee.spec.method} epoch {epoch}/{trainee.spec.recipe.epochs}: "
              f"val {val['top1']:.2f}  test {test['top1']:.2f}", flush=True)


def _finish(trainee: Trainee, teacher: Backbone | None, teacher_test: float | None, test_loader: DataLoader | None,
            device: torch.device, started: float) -> dict[str, Any]:
    """The run's record; rank 0 (``test_loader`` the whole test set) also writes its files."""
    run_dir = trainee.run_dir
    if test_loader is not None:
        final = evaluate(trainee.model, test_loader, device, keep_logits=True)
        atomic_torch_save({"logits": final["logits"], "labels": final["labels"]}, run_dir / records.TEST_LOGITS)
        atomic_torch_save({"model": trainee.model.state_dict()}, run_dir / records.WEIGHTS)
    history = trainee.history
    record = {
        "run_id": trainee.spec.run_id,
        "status": "finished",
        "spec": trainee.spec.model_dump(mode="json"),
        "summary": summarise(history, teacher_test),
        "parameters": {
            "student": count_parameters(trainee.model),
            "method": count_parameters(trainee.method),
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
    if distributed.active():
        record["environment"]["world_size"] = distributed.world()
    if test_loader is not None:
        records.write_json(run_dir / records.RECORD, record)
        (run_dir / records.CHECKPOINT).unlink(missing_ok=True)  # the weights and record now hold everything
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


def make_trainee(spec: RunSpec, run_dir: Path, method: Method, num_classes: int, teacher: Backbone | None,
                 probe: Tensor, context: Callable[..., TrainContext], device: torch.device,
                 options: EngineOptions) -> Trainee:
    """A run's student, its method set up from probe outputs, and its optimizer. ``context``
    completes a TrainContext given the probe outputs of student and teacher."""
    if method.needs.teacher and teacher is None:
        raise ConfigError(f"method '{spec.method}' distils from a teacher, but run '{spec.describe()}' has none")
    if method.needs.weak_view and spec.recipe.mixes:
        raise ConfigError(f"method '{spec.method}' trains on two views of each image, which kdbench does not mix: "
                          f"set the recipe's mixup_alpha and cutmix_alpha to 0 for run '{spec.describe()}'")
    seed_everything(spec.seed)  # each run's initialisation as if it were trained alone
    model = distributed.sync_batchnorm(create_model(spec.student, num_classes=num_classes), device).to(device)
    if _channels_last(options, device):
        model.to(memory_format=torch.channels_last)
    model.tap(method.needs.stages)
    probe = _to_device(probe, device)
    with torch.no_grad():
        student_probe = model.eval()(probe).detach()
        teacher_probe = teacher(probe).detach() if teacher is not None and method.needs.teacher else None
    model.train()
    full = context(student=student_probe, teacher=teacher_probe)
    if not method.needs.teacher_train_logits:
        full.teacher_train_logits = None
    method.setup(full)
    distributed.sync_batchnorm(method, device)
    method.to(device)
    if options.compile:
        model.compile()
    optimizer = _optimizer(spec.recipe, list(model.parameters()) + list(method.parameters()))
    scaler = torch.amp.GradScaler(device.type) if _autocast(device, options.amp, options.amp_dtype)[1] else None
    return Trainee(spec, run_dir, model, method, optimizer, scaler)


@torch.no_grad()
def _predict(model: Backbone, loader: DataLoader, device: torch.device) -> Tensor:
    return torch.cat([model(_to_device(images, device)).logits.float().cpu() for images, _ in loader])


def _optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _progress(batches: Iterator, total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=description, leave=False, dynamic_ncols=True)
