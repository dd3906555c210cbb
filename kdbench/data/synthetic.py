"""Two built-in sets that need no files: ``digits`` and ``synthetic-fg``."""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor

from . import register_dataset
from .datasets import DataSplits, TensorImageDataset
from .generated import stream_generator
from .options import DatasetOptions
from .splitting import Splitter, stratified_split
from .transforms import HALF, padded_crop_transforms


class DigitsOptions(DatasetOptions):
    image_size: PositiveInt = 32


@register_dataset("digits", DigitsOptions)
def digits(root: Path, splitter: Splitter, options: DigitsOptions) -> DataSplits:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes, no download),
    upsampled bilinearly to ``image_size`` and repeated to 3 channels so CIFAR models fit.
    The official test split is a fixed stratified 20% holdout (seed 0, whatever the training
    seed). Augmentation: RandomCrop(image_size, padding image_size/8), no flip (digits are
    not mirror-symmetric)."""
    from sklearn.datasets import load_digits

    image_size = options.image_size
    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    pixels = F.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    everything = TensorImageDataset(images, labels)
    train, test = stratified_split(labels, 0.2, seed=0)
    transforms = padded_crop_transforms(image_size, image_size // 8, flip=False, mean=HALF, std=HALF)
    classes = [str(d) for d in range(10)]
    return splitter.make(
        everything.subset(train), everything.subset(test), classes, image_size, transforms
    )


class SyntheticFGOptions(DatasetOptions):
    num_groups: PositiveInt = 4  # coarse looks: shape, colours, background
    classes_per_group: PositiveInt = 5  # stripe counts within a look
    train_per_class: PositiveInt = 60
    test_per_class: PositiveInt = 20
    image_size: PositiveInt = 32
    data_seed: NonNegativeInt = 0  # not the training seed: every run sees the same images


@register_dataset("synthetic-fg", SyntheticFGOptions)
def synthetic_fg(root: Path, splitter: Splitter, options: SyntheticFGOptions) -> DataSplits:
    """A procedurally generated fine-grained set of ``num_groups × classes_per_group``
    classes; class ``g·classes_per_group + k`` is detail ``k`` of group ``g``.

    A group fixes the coarse appearance: the object's shape (disc, square, ring or cross,
    cycling), its colour and the background's colour and texture. The classes of a group
    differ only in a small detail: the number of vertical stripes across the object, from 1.5
    to 4.5 cycles spread evenly over the group (±0.3 of a step of jitter per image), so
    neighbouring class indices look most alike and mistakes fall within a group and next
    door. Every image has its own position, size, rotation of the shape, stripe phase,
    brightness and pixel noise; the stripes keep one orientation in the image so that the
    detail is learnable at 16 px (the offline suites' regime and what it measured:
    docs/suites-and-protocols.md, "The offline regime").

    The images depend only on ``data_seed`` and the options, never on the training seed, so
    runs with different seeds see the same data (and only a different validation split).
    Augmentation: RandomCrop(image_size, padding image_size/8) + horizontal flip (stripe
    counts are mirror-invariant)."""
    o = options
    num_classes = o.num_groups * o.classes_per_group
    style = _GroupStyle(stream_generator(o.data_seed, 0), o.num_groups)

    def generate(per_class: int, stream: int) -> TensorImageDataset:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        images = _render(
            style, labels, o.classes_per_group, o.image_size, stream_generator(o.data_seed, stream)
        )
        return TensorImageDataset(images, labels)

    classes = [f"group{g}-class{k}" for g in range(o.num_groups) for k in range(o.classes_per_group)]
    transforms = padded_crop_transforms(o.image_size, o.image_size // 8, flip=True, mean=HALF, std=HALF)
    return splitter.make(
        generate(o.train_per_class, 1), generate(o.test_per_class, 2), classes, o.image_size, transforms
    )


# Distance-like functions of object-local coordinates (u, v, r = |(u, v)|), 1 on the edge.
_SHAPES = [
    lambda u, v, r: r,  # disc
    lambda u, v, r: torch.maximum(u.abs(), v.abs()),  # square
    lambda u, v, r: torch.maximum(r, 1.55 - r),  # ring
    lambda u, v, r: torch.minimum(  # cross
        torch.maximum(u.abs(), v.abs() / 0.45), torch.maximum(u.abs() / 0.45, v.abs())
    ),
]


class _GroupStyle:
    """The coarse look of each group: shape, object and background colours, background
    grating (orientation and frequency)."""

    def __init__(self, generator: torch.Generator, num_groups: int) -> None:
        hues = (
            torch.arange(num_groups) + torch.rand(num_groups, generator=generator) * 0.4 - 0.2
        ) / num_groups
        self.shape = torch.arange(num_groups) % len(_SHAPES)
        self.object_rgb = torch.tensor(
            [colorsys.hsv_to_rgb(h % 1, 0.65, 0.9) for h in hues.tolist()]
        )
        self.background_rgb = torch.tensor(
            [colorsys.hsv_to_rgb((h + 0.5) % 1, 0.4, 0.35) for h in hues.tolist()]
        )
        self.grating_angle = torch.rand(num_groups, generator=generator) * torch.pi
        self.grating_cycles = 1 + 2 * torch.rand(num_groups, generator=generator)  # per width


_CHUNK = 256  # images rendered at once: bounds memory at large image sizes


def _render(
    style: _GroupStyle, labels: Tensor, per_group: int, size: int, generator: torch.Generator
) -> Tensor:
    """uint8 images N×3×size×size for ``labels``; every random draw comes from ``generator``."""
    n = len(labels)
    group, detail = labels // per_group, labels % per_group

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    step = 3.0 / max(per_group - 1, 1)
    params = {
        "cx": uniform(-0.25, 0.25),  # centre, in image coordinates [-1, 1]
        "cy": uniform(-0.25, 0.25),
        "radius": uniform(0.45, 0.6),
        "angle": uniform(0, 2 * torch.pi),
        "cycles": 1.5 + (detail + uniform(-0.3, 0.3)) * step,  # stripes across the object
        "stripe_phase": uniform(0, 2 * torch.pi),
        "grating_phase": uniform(0, 2 * torch.pi),
        "brightness": uniform(0.75, 1.0),
        "background_gain": uniform(0.8, 1.2),
    }
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        noise = 0.06 * torch.randn(len(labels[part]), 3, size, size, generator=generator)
        chunk = {k: v[part, None, None] for k, v in params.items()}
        out[part] = _draw(style, group[part], chunk, size, noise)
    return out


def _draw(
    style: _GroupStyle, group: Tensor, p: dict[str, Tensor], size: int, noise: Tensor
) -> Tensor:
    """One chunk of images, float in [0, 1] until the final uint8 conversion."""
    coords = (torch.arange(size) + 0.5) / size * 2 - 1
    x, y = coords[None, None, :], coords[None, :, None]
    # Object-local coordinates: the object is the unit shape, rotated.
    dx, dy = (x - p["cx"]) / p["radius"], (y - p["cy"]) / p["radius"]
    cos, sin = p["angle"].cos(), p["angle"].sin()
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    r = torch.hypot(u, v)
    shape = style.shape[group]
    distance = torch.empty_like(u)
    for s, fn in enumerate(_SHAPES):
        chosen = shape == s
        distance[chosen] = fn(u[chosen], v[chosen], r[chosen])
    # Antialiased coverage: a one-pixel ramp across the edge.
    mask = ((1 - distance) * p["radius"] * size / 2 + 0.5).clamp(0, 1).unsqueeze(1)
    shade = p["brightness"] * (1 + 0.4 * torch.cos(torch.pi * p["cycles"] * dx + p["stripe_phase"]))
    obj = style.object_rgb[group][:, :, None, None] * shade.unsqueeze(1)
    angle = style.grating_angle[group][:, None, None]
    along = x * angle.cos() + y * angle.sin()
    grating = 0.08 * torch.cos(
        torch.pi * style.grating_cycles[group][:, None, None] * along + p["grating_phase"]
    )
    gain = p["background_gain"].unsqueeze(1)
    background = style.background_rgb[group][:, :, None, None] * gain + grating.unsqueeze(1)
    image = torch.lerp(background, obj, mask) + noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
