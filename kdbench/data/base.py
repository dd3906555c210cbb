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
from dataclasses import dataclass, replace
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


def resized_short_side(image_size: int) -> int:
    """The Resize step of the 224-px recipes: the short side scaled to 256/224 of the crop."""
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class RaggedImages:
    """uint8 RGB images of different sizes in one flat buffer, each stored as its H×W×3 rows
    (the layout of a prepared store, ``kdbench.data.prepared``). ``flat`` may live on any
    device; where each image starts and its size are kept on the CPU, where the crops are
    cut."""

    flat: Tensor  # uint8, 1-D
    offsets: Tensor  # int64 (N,): the element of ``flat`` where each image starts
    heights: Tensor  # int64 (N,)
    widths: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: Tensor) -> RaggedImages:
        index = index.cpu()
        return RaggedImages(self.flat, self.offsets[index], self.heights[index], self.widths[index])

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def image(self, offset: int, height: int, width: int) -> Tensor:
        """The image stored at ``offset`` as a 3×H×W view (channels last in memory)."""
        return self.flat[offset : offset + height * width * 3].view(height, width, 3).permute(2, 0, 1)


@dataclass(frozen=True)
class BatchResizedCrop:
    """The 224-px recipe applied to a whole batch of a prepared store's images
    (``RaggedImages``, each already resized so its short side is ``resized_short_side(size)``)
    on the batch's device. Training: ``train_crop`` "random_resized" is
    RandomResizedCrop(size, ``scale``, ``ratio``), "resize_crop" a RandomCrop(size) of the
    resized image, each followed by a horizontal flip with probability ½; evaluation
    (``augment=False``) is CenterCrop(size), which with the stored resize is exactly the eval
    transform of the folder loader. Then ImageNet-style normalisation with ``mean``/``std``.

    Crop boxes and flips are drawn as torchvision draws them (``RandomResizedCrop.get_params``:
    ten tries of a uniform area fraction and a log-uniform aspect ratio, else the whole image
    clipped to the ratio range), all images at once, from the CPU's global random stream:
    each box is cut as a view with Python slice bounds, and drawing them on a GPU would stall
    every batch on a device-to-host copy. Each box is resized with bilinear interpolation,
    antialiased as torchvision's tensor path is (uint8 on a CPU, as torchvision does there;
    float32 on a GPU, which has no uint8 kernel). Returns float32 N×3×size×size."""

    size: int
    train_crop: TrainCrop
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def boxes(self, heights: Tensor, widths: Tensor) -> Tensor:
        """(top, left, height, width) of a random training crop of each image, int64 N×4."""
        if self.train_crop == "resize_crop":
            top = (torch.rand(len(heights)) * (heights - self.size + 1)).long()
            left = (torch.rand(len(widths)) * (widths - self.size + 1)).long()
            side = torch.full_like(heights, self.size)
            return torch.stack([top, left, side, side], 1)
        tries = 10
        n = len(heights)
        h_img, w_img = heights.double()[:, None], widths.double()[:, None]
        area = h_img * w_img * torch.empty(n, tries, dtype=torch.float64).uniform_(*self.scale)
        log_ratio = torch.tensor(self.ratio, dtype=torch.float64).log()
        aspect = torch.empty(n, tries, dtype=torch.float64).uniform_(*log_ratio.tolist()).exp()
        w = (area * aspect).sqrt().round()
        h = (area / aspect).sqrt().round()
        fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
        first = fits.double().argmax(1, keepdim=True)  # the first try that fits, as torchvision takes
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        # torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio
        in_ratio = widths.double() / heights.double()
        low, high = self.ratio
        fallback_w = torch.where(in_ratio > high, (heights * high).round(), widths.double())
        fallback_h = torch.where(in_ratio < low, (widths / low).round(), heights.double())
        found = fits.any(1)
        h = torch.where(found, h, fallback_h)
        w = torch.where(found, w, fallback_w)
        top = torch.where(found, (torch.rand(n) * (heights - h + 1)).floor(), (heights - h) // 2)
        left = torch.where(found, (torch.rand(n) * (widths - w + 1)).floor(), (widths - w) // 2)
        return torch.stack([top, left, h, w], 1).long()

    def center_boxes(self, heights: Tensor, widths: Tensor) -> Tensor:
        """The CenterCrop(size) box of each image, placed as torchvision places it."""
        return torch.tensor(
            [
                [round((h - self.size) / 2.0), round((w - self.size) / 2.0), self.size, self.size]
                for h, w in zip(heights.tolist(), widths.tolist())
            ],
            dtype=torch.int64,
        ).view(-1, 4)

    def __call__(self, images: RaggedImages, augment: bool = True) -> Tensor:
        n, s = len(images), self.size
        if augment:
            boxes = self.boxes(images.heights, images.widths).tolist()
            flips = (torch.rand(n) < 0.5).tolist()
        else:
            boxes, flips = self.center_boxes(images.heights, images.widths).tolist(), [False] * n
        on_cpu = images.device.type == "cpu"
        out = torch.empty(n, 3, s, s, device=images.device)
        stored = zip(images.offsets.tolist(), images.heights.tolist(), images.widths.tolist())
        for i, ((offset, height, width), (top, left, h, w), flip) in enumerate(zip(stored, boxes, flips)):
            crop = images.image(offset, height, width)[:, top : top + h, left : left + w]
            if (h, w) != (s, s):
                crop = torch.nn.functional.interpolate(
                    (crop if on_cpu else crop.float())[None], size=(s, s), mode="bilinear",
                    antialias=True, align_corners=False,
                )[0]
            out[i] = crop.flip(-1) if flip else crop
        # (x/255 - mean)/std in place: a fresh batch-sized buffer per operation would cost
        # more than the arithmetic (page faults on a CPU)
        std = torch.tensor(self.std, device=out.device)[:, None, None]
        mean = torch.tensor(self.mean, device=out.device)[:, None, None]
        return out.mul_(1 / (255 * std)).sub_(mean / std)


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


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, got {list(bounds)}")
    return bounds


# The training crop of the 224-px sets (their options ``train_crop``, ``crop_scale``,
# ``crop_ratio``): "resize_crop" is ``resize_crop_transforms``, "random_resized" is
# ``random_resized_crop_transforms`` with that scale and ratio range (torchvision's defaults).
TrainCrop = Literal["resize_crop", "random_resized"]
CropRange = Annotated[tuple[PositiveFloat, PositiveFloat], AfterValidator(_ordered)]
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


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


def large_image_transforms(
    image_size: int,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_ratio: tuple[float, float] = CROP_RATIO,
) -> SplitTransforms:
    """The recipe a 224-px set's options name (``crop_scale`` and ``crop_ratio`` are read only
    with ``train_crop`` "random_resized"), with its batch form for a prepared store's images."""
    per_image = (
        random_resized_crop_transforms(image_size, crop_scale, crop_ratio)
        if train_crop == "random_resized"
        else resize_crop_transforms(image_size)
    )
    batch = BatchResizedCrop(
        image_size, train_crop, tuple(crop_scale), tuple(crop_ratio), IMAGENET_MEAN, IMAGENET_STD
    )
    return replace(per_image, batch=batch)


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
        transforms: SplitTransforms,
    ) -> DataSplits:
        """Carve the validation split out of the official ``train`` split and attach the
        transforms."""
        kept, held = stratified_split(train.labels, self.val_fraction, self.seed)
        train_split = train.subset(kept, transforms.transform(self.augment))
        return DataSplits(
            train=train_split,
            val=train.subset(held, transforms.eval),
            test=test.subset(torch.arange(len(test)), transforms.eval),
            num_classes=len(classes),
            input_size=input_size,
            classes=list(classes),
            train_labels=train_split.labels,
            name=self.name,
            transforms=transforms,
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
