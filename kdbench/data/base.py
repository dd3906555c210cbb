"""The pieces every loader shares: two dataset classes, the seeded validation split, the
augmentation recipes, and helpers that read split files with errors naming file and line.

A loader parses its set's files into an official train and test split, each one
``ImageFileDataset`` (paths, loaded lazily) or ``TensorImageDataset`` (an in-memory uint8
tensor), and hands them to ``Splitter.make``, which carves the validation split out of the
official train split and attaches the transforms.
"""

from __future__ import annotations

import copy
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from PIL import Image
from pydantic import AfterValidator, PositiveFloat
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError

Transform = Callable[[Any], Tensor]

# How the training images are augmented (a recipe's ``augment``): "none" gives them the
# eval transform, "standard" the set's recipe (crop + flip), "strong" the recipe followed
# by MLKD's RandAugment and Cutout (``StrongAugment``).
Augment = Literal["none", "standard", "strong"]
AUGMENTATIONS: tuple[Augment, ...] = ("none", "standard", "strong")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_ROOT_NOTE = (
    "The data root is the --data-root argument, else $KDBENCH_DATA, else ~/.cache/kdbench/data."
)


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
    recipe: Recipe | None = None  # the transforms used, for a batched on-device data path

    def train_view(self, augment: Augment) -> Dataset:
        """The training samples, in the same order, under the transform of another
        augmentation level (a second view of each image, e.g. MLKD's weak one)."""
        if not isinstance(self.train, ImageDataset) or self.recipe is None:
            raise DataError(f"data set '{self.name}' gives no recipe, so it has no second view of its training images")
        return self.train.subset(torch.arange(len(self.train)), self.recipe.transform(augment))


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


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB; a missing, truncated or unreadable file is a DataError
    naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}") from e


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held_out) positions, both sorted: ``round(fraction·N)`` items held out, each
    class contributing in proportion to its size (±1), chosen at random from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    # Each item's key is its rank within its shuffled class, jittered and scaled to [0, 1):
    # the smallest keys overall take about the same fraction of every class.
    key = torch.empty(len(labels))
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        n = len(members)
        ranks = torch.randperm(n, generator=generator)
        key[members] = (ranks + torch.rand(n, generator=generator)) / n
    order = key.argsort()
    held = round(fraction * len(labels))
    return order[held:].sort().values, order[:held].sort().values


@dataclass(frozen=True)
class BatchCrop:
    """The padded-crop recipe applied to a whole uint8 batch B×C×H×W at once, on the batch's
    device: each image gets its own crop offset and flip, drawn from the global RNG of that
    device. Used by the on-device data path for sets held in memory (``augment=False``
    only normalises)."""

    padding: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor, augment: bool = True) -> Tensor:
        x = images.float().div_(255)
        if augment:
            n, _, h, w = x.shape
            padded = torch.nn.functional.pad(x, [self.padding] * 4)
            top = torch.randint(2 * self.padding + 1, (n, 1, 1), device=x.device)
            left = torch.randint(2 * self.padding + 1, (n, 1, 1), device=x.device)
            rows = (top + torch.arange(h, device=x.device)[None, :, None]).expand(n, h, w)
            cols = (left + torch.arange(w, device=x.device)[None, None, :]).expand(n, h, w)
            if self.flip:
                mirrored = torch.rand(n, 1, 1, device=x.device) < 0.5
                cols = torch.where(mirrored, cols.flip(-1), cols)
            batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.std, device=x.device)[:, None, None]
        return ((x - mean) / std).contiguous()


@dataclass(frozen=True)
class Recipe:
    """The transforms of one set: ``train`` (augmented) and ``eval``, and where the set is
    held in memory, the same recipe for whole batches (``batch``)."""

    train: Transform
    eval: Transform
    batch: BatchCrop | None = None

    def transform(self, augment: Augment) -> Transform:
        """The training transform at augmentation level ``augment``."""
        if augment == "none":
            return self.eval
        if augment == "standard":
            return self.train
        return with_strong_augmentation(self.train)


# --- strong augmentation: MLKD's (Jin et al., CVPR 2023; Jin-Ying/Multi-Level-Logit-
# Distillation, mdistiller/dataset/cifar100.py), written with torchvision's functional ops
# on uint8 images. Each operation takes a magnitude drawn uniformly from its range; the
# ranges are the released code's, which are not torchvision's RandAugment: its enhance
# factors lie in [0.05, 0.95] (they only ever weaken), rotation ±30°, shear and translation
# ±0.3, posterize 4–7 bits, solarize threshold in [0, 256].

def _shear(horizontal: bool) -> Callable[[Tensor, float], Tensor]:
    # PIL's affine (1, v, 0, 0, 1, 0) about the top-left corner is a shear by atan(v)
    def shear(image: Tensor, v: float) -> Tensor:
        angle = math.degrees(math.atan(v))
        return TF.affine(image, angle=0.0, translate=[0.0, 0.0], scale=1.0,
                         shear=[angle, 0.0] if horizontal else [0.0, angle], center=[0.0, 0.0])
    return shear


def _translate(horizontal: bool) -> Callable[[Tensor, float], Tensor]:
    # v is a fraction of the image's size; PIL's (1, 0, t, 0, 1, 0) moves the content by -t
    def translate(image: Tensor, v: float) -> Tensor:
        shift = -v * image.shape[-1 if horizontal else -2]
        return TF.affine(image, angle=0.0, translate=[shift, 0.0] if horizontal else [0.0, shift],
                         scale=1.0, shear=[0.0, 0.0])
    return translate


def _solarize(image: Tensor, threshold: float) -> Tensor:
    return image if threshold > 255 else TF.solarize(image, threshold)  # above 255 no pixel is inverted


# (name, low, high, operation at magnitude v), in the released code's order
STRONG_OPS: tuple[tuple[str, float, float, Callable[[Tensor, float], Tensor]], ...] = (
    ("autocontrast", 0, 1, lambda x, v: TF.autocontrast(x)),
    ("brightness", 0.05, 0.95, TF.adjust_brightness),
    ("color", 0.05, 0.95, TF.adjust_saturation),
    ("contrast", 0.05, 0.95, TF.adjust_contrast),
    ("equalize", 0, 1, lambda x, v: TF.equalize(x)),
    ("identity", 0, 1, lambda x, v: x),
    ("posterize", 4, 8, lambda x, v: TF.posterize(x, max(1, int(v)))),
    ("rotate", -30, 30, lambda x, v: TF.rotate(x, v)),
    ("sharpness", 0.05, 0.95, TF.adjust_sharpness),
    ("shear_x", -0.3, 0.3, _shear(True)),
    ("shear_y", -0.3, 0.3, _shear(False)),
    ("solarize", 0, 256, _solarize),
    ("translate_x", -0.3, 0.3, _translate(True)),
    ("translate_y", -0.3, 0.3, _translate(False)),
)
CUTOUT_FILL = (125, 123, 114)  # the released code's grey, about CIFAR-100's mean colour


def cutout(image: Tensor, fraction: float) -> Tensor:
    """A square of side ``fraction``·width filled with CUTOUT_FILL, as the released code
    draws it: the centre uniform over the image, the top-left corner clipped to the image
    (the square then reaches ``side`` past it, clipped too), both corners filled (PIL)."""
    if fraction <= 0:
        return image
    height, width = image.shape[-2:]
    side = fraction * width
    cx, cy = float(torch.rand(())) * width, float(torch.rand(())) * height
    x0, y0 = int(max(0.0, cx - side / 2)), int(max(0.0, cy - side / 2))
    x1, y1 = min(width - 1, int(x0 + side)), min(height - 1, int(y0 + side))
    out = image.clone()
    out[..., y0:y1 + 1, x0:x1 + 1] = torch.tensor(CUTOUT_FILL, dtype=image.dtype)[:, None, None]
    return out


@dataclass(frozen=True)
class StrongAugment:
    """MLKD's strong augmentation of a uint8 image C×H×W: ``ops`` operations drawn with
    replacement from STRONG_OPS, each at a uniform magnitude in its range (the code's
    ``RandAugment(2, 10)`` never reads its magnitude 10), then ``cutout`` with a side
    uniform in [0, ½]·width. Random numbers come from torch's generator."""

    ops: int = 2

    def __call__(self, image: Tensor) -> Tensor:
        for k in torch.randint(len(STRONG_OPS), (self.ops,)).tolist():
            _, low, high, operation = STRONG_OPS[k]
            image = operation(image, low + (high - low) * float(torch.rand(())))
        return cutout(image, 0.5 * float(torch.rand(())))


def with_strong_augmentation(train: Transform) -> Transform:
    """``train`` with StrongAugment where its image is still uint8: after its crop and flip,
    right before it converts to float (as MLKD's transform goes crop, flip, RandAugment +
    Cutout, ToTensor, Normalize)."""
    steps = list(train.transforms) if isinstance(train, v2.Compose) else []
    at = next((i for i, step in enumerate(steps) if isinstance(step, v2.ToDtype)), None)
    if at is None:
        raise DataError("augment 'strong' needs a recipe whose training transform is a v2.Compose "
                        "that converts a uint8 image with v2.ToDtype (as padded_crop_recipe's does)")
    return v2.Compose([*steps[:at], StrongAugment(), *steps[at:]])


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def padded_crop_recipe(
    size: int, padding: int, flip: bool, mean: Sequence[float], std: Sequence[float]
) -> Recipe:
    """The CIFAR recipe for images already ``size`` px square: train RandomCrop(size,
    padding) [+ horizontal flip]; eval only normalises. Takes PIL images or uint8 tensors."""
    flips = [v2.RandomHorizontalFlip()] if flip else []
    return Recipe(
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


def resize_crop_recipe(image_size: int = 224) -> Recipe:
    """The standard 224-px recipe scaled to ``image_size``: train Resize(image_size·256/224)
    + RandomCrop(image_size) + horizontal flip; eval Resize + CenterCrop; ImageNet
    normalisation."""
    return Recipe(
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


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, got {list(bounds)}")
    return bounds


# The training crop of the 224-px sets (their options ``train_crop``, ``crop_scale``,
# ``crop_ratio``): "resize_crop" is ``resize_crop_recipe``, "random_resized" is
# ``random_resized_crop_recipe`` with that scale and ratio range (torchvision's defaults).
TrainCrop = Literal["resize_crop", "random_resized"]
CropRange = Annotated[tuple[PositiveFloat, PositiveFloat], AfterValidator(_ordered)]
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop_recipe(
    image_size: int = 224,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> Recipe:
    """The ImageNet training recipe of the fine-grained KD literature (CS-KD, FRSKD, L2T-ww):
    train RandomResizedCrop(image_size, scale, ratio) — a crop of a random ``scale`` fraction
    of the image's area and aspect ratio in ``ratio``, resized to image_size² — + horizontal
    flip; eval Resize(image_size·256/224) + CenterCrop(image_size); ImageNet normalisation."""
    return Recipe(
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


def large_image_recipe(
    image_size: int,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_ratio: tuple[float, float] = CROP_RATIO,
) -> Recipe:
    """The recipe a 224-px set's options name (``crop_scale`` and ``crop_ratio`` are read only
    with ``train_crop`` "random_resized")."""
    if train_crop == "random_resized":
        return random_resized_crop_recipe(image_size, crop_scale, crop_ratio)
    return resize_crop_recipe(image_size)


@dataclass(frozen=True)
class Splitter:
    """The choices every dataset shares, given by ``create_dataset``."""

    name: str
    seed: int
    val_fraction: float
    augment: Augment

    def make(
        self,
        train: ImageDataset,
        test: ImageDataset,
        classes: Sequence[str],
        input_size: int,
        recipe: Recipe,
    ) -> DataSplits:
        """Carve the validation split out of the official ``train`` split and attach the
        transforms."""
        kept, held = stratified_split(train.labels, self.val_fraction, self.seed)
        train_split = train.subset(kept, recipe.transform(self.augment))
        return DataSplits(
            train=train_split,
            val=train.subset(held, recipe.eval),
            test=test.subset(torch.arange(len(test)), recipe.eval),
            num_classes=len(classes),
            input_size=input_size,
            classes=list(classes),
            train_labels=train_split.labels,
            name=self.name,
            recipe=recipe,
        )


def require(path: Path, dataset: str, how: str) -> Path:
    """``path``, or a DataError saying it is missing and how to get the set."""
    if not path.exists():
        raise DataError(f"{dataset}: {path} not found. {how} {DATA_ROOT_NOTE}")
    return path


def require_files(paths: Sequence[Path], listed_in: Path) -> None:
    """A DataError when images listed in a split file are not on disk."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {listed_in} are missing, e.g. {missing[0]}"
        )


def read_records(
    path: Path, pattern: str, expected: str, skip: int = 0
) -> list[tuple[int, tuple[str, ...]]]:
    """``(line number, groups)`` of every non-blank line of a text file that the regex
    ``pattern`` matches in full (after stripping), the first ``skip`` lines left out; a
    line that does not match is a DataError naming the file, the line and ``expected``."""
    regex = re.compile(pattern)
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if number <= skip or not line:
                continue
            match = regex.fullmatch(line)
            if match is None:
                raise malformed(path, number, f"expected {expected}, got {line!r}")
            records.append((number, match.groups()))
    return records


def malformed(path: Path, line: int, problem: str) -> DataError:
    return DataError(f"{path}, line {line}: {problem}")
