"""The data-set classes: ``DataSplits``, what ``create_dataset`` returns, and the image
datasets a loader builds its official train and test splits from, ``ImageFileDataset``
(paths, loaded lazily) or ``TensorImageDataset`` (an in-memory uint8 tensor). A loader
hands both to ``splitting.Splitter.make``, which carves the validation split out of the
official train split and attaches the transforms."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .batch_crops import RaggedImages
from .transforms import Augment, SplitTransforms, Transform


@dataclass
class DataSplits:
    """What ``create_dataset`` returns. Items of each split are ``(image, label)``: a
    normalised float tensor C×H×W (H = W = ``input_size``) and an int."""

    train: Dataset  # official train minus val; transform of the ``augment`` level asked for
    val: Dataset  # seeded, stratified, carved from the official train split; eval transform
    test: Dataset  # the official test (or official val) split; eval transform
    num_classes: int
    input_size: int
    classes: list[str]
    train_labels: Tensor  # int64 label of every item of ``train``, in order
    name: str
    transforms: SplitTransforms | None = None  # the transforms used, for a batched on-device data path

    def train_view(self, augment: Augment) -> Dataset:
        """The training samples, in the same order, under the transform of another
        augmentation level (a second view of each image, e.g. MLKD's weak one)."""
        if not isinstance(self.train, ImageDataset) or self.transforms is None:
            raise DataError(f"data set '{self.name}' gives no transforms, so it has no second view of its training images")
        return self.train.subset(torch.arange(len(self.train)), self.transforms.transform(augment))


class ImageDataset(Dataset, ABC):
    """Items of one official split, seen through ``indices`` (positions in that split) and
    one transform. ``subset`` makes a view that shares the underlying images."""

    def __init__(self, labels: Sequence[int] | Tensor) -> None:
        self._labels = torch.as_tensor(labels, dtype=torch.int64)
        self.indices = torch.arange(len(self._labels))
        self.transform: Transform | None = None

    @property
    def labels(self) -> Tensor:
        return self._labels[self.indices]

    def subset(self, indices: Tensor, transform: Transform | None = None) -> ImageDataset:
        view = copy.copy(self)
        view.indices = self.indices[indices]
        view.transform = transform
        return view

    def official(self) -> ImageDataset:
        """The whole official split this view looks into, untransformed."""
        view = copy.copy(self)
        view.indices = torch.arange(len(self._labels))
        view.transform = None
        return view

    def resident(self, device: torch.device) -> Tensor | RaggedImages | None:
        """The view's images as uint8 on ``device``, for augmentation a whole batch at a
        time (``SplitTransforms.batch``); None where they are not held as pixels."""
        return None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = int(self.indices[i])
        image = self.load(j)
        return (image if self.transform is None else self.transform(image)), int(self._labels[j])

    @abstractmethod
    def load(self, j: int) -> Any:
        """The untransformed image at position ``j`` of the official split."""


class ImageFileDataset(ImageDataset):
    """Images read from their paths when an item is asked for (PIL, converted to RGB)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | Tensor) -> None:
        super().__init__(labels)
        self.files = list(paths)

    @property
    def paths(self) -> list[Path]:
        return [self.files[j] for j in self.indices.tolist()]

    def load(self, j: int) -> Image.Image:
        return load_rgb(self.files[j])


class TensorImageDataset(ImageDataset):
    """Images held in memory as one uint8 tensor N×C×H×W."""

    def __init__(self, images: Tensor, labels: Sequence[int] | Tensor) -> None:
        super().__init__(labels)
        self.images = images

    def load(self, j: int) -> Tensor:
        return self.images[j]

    def resident(self, device: torch.device) -> Tensor:
        return self.images[self.indices].to(device)


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB; a missing, truncated or unreadable file is a DataError
    naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}") from e
