"""Transform recipes: each set's per-image training and evaluation transforms
(``SplitTransforms``), with their batch form where the set is held as pixels.

The CIFAR recipe (``padded_crop_transforms``) and the 224-px recipes of the fine-grained
literature (``resize_crop_transforms``, ``random_resized_crop_transforms``, picked by a set's
``LargeImageOptions`` in ``large_image_transforms``); ``augment`` "strong" adds MLKD's
augmentation (``strong_augment``) to the training transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

from ..errors import DataError
from .batch_crops import BatchCrop, BatchResizedCrop
from .options import CROP_RATIO, CROP_SCALE, LargeImageOptions
from .strong_augment import StrongAugment

Transform = Callable[[Any], Tensor]

# How the training images are augmented (a recipe's ``augment``): "none" gives them the
# eval transform, "standard" the set's recipe (crop + flip), "strong" the recipe followed
# by MLKD's RandAugment and Cutout (``StrongAugment``).
Augment = Literal["none", "standard", "strong"]
AUGMENTATIONS: tuple[Augment, ...] = ("none", "standard", "strong")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # mean and std that map [0, 1] to [-1, 1] (the generated sets')


@dataclass(frozen=True)
class SplitTransforms:
    """The transforms of one set's splits: ``train`` (augmented) and ``eval`` (val and test),
    and where the set is held in memory, the same augmentation for whole batches (``batch``)."""

    train: Transform
    eval: Transform
    batch: BatchCrop | BatchResizedCrop | None = None

    def transform(self, augment: Augment) -> Transform:
        """The training transform at augmentation level ``augment``."""
        if augment == "none":
            return self.eval
        if augment == "standard":
            return self.train
        return with_strong_augmentation(self.train)


def with_strong_augmentation(train: Transform) -> Transform:
    """``train`` with StrongAugment where its image is still uint8: after its crop and flip,
    right before it converts to float (as MLKD's transform goes crop, flip, RandAugment +
    Cutout, ToTensor, Normalize)."""
    steps = list(train.transforms) if isinstance(train, v2.Compose) else []
    at = next((i for i, step in enumerate(steps) if isinstance(step, v2.ToDtype)), None)
    if at is None:
        raise DataError("augment 'strong' needs transforms whose training transform is a v2.Compose "
                        "that converts a uint8 image with v2.ToDtype (as padded_crop_transforms's does)")
    return v2.Compose([*steps[:at], StrongAugment(), *steps[at:]])


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def padded_crop_transforms(
    size: int, padding: int, flip: bool, mean: Sequence[float], std: Sequence[float]
) -> SplitTransforms:
    """The CIFAR recipe for images already ``size`` px square: train RandomCrop(size,
    padding) [+ horizontal flip]; eval only normalises. Takes PIL images or uint8 tensors."""
    flips = [v2.RandomHorizontalFlip()] if flip else []
    return SplitTransforms(
        batch=BatchCrop(padding, flip, tuple(mean), tuple(std)),
        train=v2.Compose(
            [
                v2.ToImage(),
                v2.RandomCrop(size, padding=padding),
                *flips,
                *_to_normalised_tensor(mean, std),
            ]
        ),
        eval=v2.Compose([v2.ToImage(), *_to_normalised_tensor(mean, std)]),
    )


def _resize_center_crop(image_size: int) -> Transform:
    """The 224-px evaluation transform scaled to ``image_size``: Resize(image_size·256/224)
    (short side) + CenterCrop(image_size), ImageNet normalisation."""
    return v2.Compose(
        [
            v2.Resize(round(image_size * 256 / 224)),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            *_to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def resize_crop_transforms(image_size: int = 224) -> SplitTransforms:
    """The standard 224-px recipe scaled to ``image_size``: train Resize(image_size·256/224)
    + RandomCrop(image_size) + horizontal flip; eval Resize + CenterCrop; ImageNet
    normalisation."""
    return SplitTransforms(
        train=v2.Compose(
            [
                v2.Resize(round(image_size * 256 / 224)),
                v2.RandomCrop(image_size),
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                *_to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
        eval=_resize_center_crop(image_size),
    )


def random_resized_crop_transforms(
    image_size: int = 224,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> SplitTransforms:
    """The ImageNet training recipe of the fine-grained KD literature (CS-KD, FRSKD, L2T-ww):
    train RandomResizedCrop(image_size, scale, ratio) — a crop of a random ``scale`` fraction
    of the image's area and aspect ratio in ``ratio``, resized to image_size² — + horizontal
    flip; eval Resize(image_size·256/224) + CenterCrop(image_size); ImageNet normalisation."""
    return SplitTransforms(
        train=v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio),
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                *_to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
        eval=_resize_center_crop(image_size),
    )


def large_image_transforms(options: LargeImageOptions) -> SplitTransforms:
    """The recipe a 224-px set's options name (``crop_scale`` and ``crop_ratio`` are read only
    with ``train_crop`` "random_resized"), with its batch form for a prepared store's images."""
    per_image = (
        random_resized_crop_transforms(options.image_size, options.crop_scale, options.crop_ratio)
        if options.train_crop == "random_resized"
        else resize_crop_transforms(options.image_size)
    )
    batch = BatchResizedCrop(
        options.image_size, options.train_crop, tuple(options.crop_scale), tuple(options.crop_ratio),
        IMAGENET_MEAN, IMAGENET_STD,
    )
    return replace(per_image, batch=batch)
