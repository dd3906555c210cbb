"""Batches: the data set's splits, and the training batches of each epoch, either from a
loader (augmented per image, in this process or in loader processes) or from a training
set held as pixels on the device (augmented a whole batch at a time), optionally mixed
(mixup / CutMix).

Every epoch's permutation comes from the shuffle stream; augmentation and mixing draw
from the epoch's data stream (``streams``). Data-parallel (``WORLD_SIZE`` > 1), the
permutation is cut into global batches of ``recipe.batch_size`` and rank r takes the
r-th slice of each (``EpochBatches``), so the ranks together see exactly the
single-process batches; evaluation splits are cut into contiguous shards (``shard``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import distributed
from ..data import DataSplits, create_dataset
from ..data.batch_crops import BatchCrop, BatchResizedCrop, RaggedImages
from ..data.datasets import ImageDataset
from ..data.transforms import Augment
from ..spec import Recipe, RunSpec
from .options import EngineOptions, Execution
from .streams import RngStream

SPLIT_SEED = 0  # one validation split for every training seed, so model selection is comparable


def open_data(spec: RunSpec, options: EngineOptions, augment: Augment | bool) -> DataSplits:
    data = create_dataset(spec.dataset.name, options.data_root, seed=SPLIT_SEED,
                          val_fraction=spec.dataset.val_fraction, augment=augment, **spec.dataset.options)
    return first_samples(data, options.subset) if options.subset else data


def first_samples(data: DataSplits, n: int) -> DataSplits:
    """The first ``n`` samples of each split (a smoke run's ``subset``)."""
    def head(split: Dataset) -> Dataset:
        return Subset(split, range(min(n, len(split))))

    return replace(data, train=head(data.train), val=head(data.val), test=head(data.test),
                   train_labels=data.train_labels[:n])


def weak_view_of(data: DataSplits, augment: Augment) -> Dataset:
    """The second view of the training images for methods that ``needs.weak_view``: the
    standard recipe's (no augmentation when the recipe has none)."""
    level = "none" if augment == "none" else "standard"
    if isinstance(data.train, Subset):  # a smoke run's first samples (``first_samples``)
        return Subset(replace(data, train=data.train.dataset).train_view(level), data.train.indices)
    return data.train_view(level)


def shard(dataset: Dataset) -> Dataset:
    """This rank's contiguous part of an evaluation split (all of it in a single process)."""
    if not distributed.active():
        return dataset
    n, rank, world = len(dataset), distributed.rank(), distributed.world()
    return Subset(dataset, range(rank * n // world, (rank + 1) * n // world))


def eval_loader(dataset: Dataset, batch_size: int, execution: Execution) -> DataLoader:
    """An evaluation loader: in order, no augmentation beyond the split's transform."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=execution.workers, pin_memory=execution.pin_memory)


def to_device(images: Tensor, execution: Execution) -> Tensor:
    """``images`` on the execution's device, in its layout (NHWC when ``channels_last``)."""
    images = images.to(execution.device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if execution.channels_last else images


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


def loader_batches(loader: DataLoader, stream: RngStream) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
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


def make_mixer(recipe: Recipe, num_classes: int) -> Any:
    """timm's Mixup at the recipe's α, whole batches, label smoothing 0; None without mixing."""
    if not recipe.mixes:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, label_smoothing=0.0,
                 num_classes=num_classes)


def mixed(batches: Iterator[tuple[Any, Tensor, Tensor]], mixer: Any, stream: RngStream
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


@dataclass
class TrainBatches:
    """The training set's batches, one epoch at a time: from the device-resident set when
    there is one, else from a loader whose processes live as long as the run (their
    start-up is paid once; they are seeded from the data stream of the first epoch trained
    in this process), mixed when the recipe mixes."""

    sampler: EpochBatches
    mixer: Any
    resident: ResidentTrainSet | None
    loader: DataLoader | None

    @classmethod
    def of(cls, data: DataSplits, recipe: Recipe, weak_view: bool, execution: Execution) -> TrainBatches:
        """``weak_view``: every batch also carries the standard recipe's view of its images."""
        train_set = Indexed(data.train, weak_view_of(data, recipe.augment) if weak_view else None)
        resident = (ResidentTrainSet.of(data, recipe.augment, execution.device, weak_view) if execution.device_data
                    else None)
        mixer = make_mixer(recipe, data.num_classes)
        sampler = EpochBatches(len(train_set), recipe.batch_size, 0, distributed.rank(), distributed.world())
        loader = None if resident is not None else DataLoader(
            train_set, batch_sampler=sampler, num_workers=execution.workers, pin_memory=execution.pin_memory,
            persistent_workers=execution.workers > 0)
        return cls(sampler, mixer, resident, loader)

    def epoch(self, shuffle_seed: int, stream: RngStream) -> Iterator[tuple[Any, Tensor, Tensor, Tensor | None]]:
        """The epoch's batches in the order ``shuffle_seed`` draws, augmented and mixed with ``stream``."""
        self.sampler.seed = shuffle_seed
        batches = (self.resident.batches(self.sampler, stream) if self.resident is not None
                   else loader_batches(self.loader, stream))
        return mixed(batches, self.mixer, stream)
