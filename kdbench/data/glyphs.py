"""``glyphs``: a generated set of look-alike classes that only a few pixels tell apart."""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

from ..errors import ConfigError
from . import register_dataset
from .datasets import DataSplits, TensorImageDataset
from .generated import portable_noise, stream_generator
from .options import DatasetOptions
from .splitting import Splitter
from .transforms import HALF, padded_crop_transforms


class GlyphsOptions(DatasetOptions):
    """The defaults are a regime measured for an offline suite (see ``glyphs``)."""

    num_groups: PositiveInt = 10  # a group: ink and paper colours and a glyph
    classes_per_group: PositiveInt = 5  # its variants, each with its own cells flipped
    glyph_size: PositiveInt = 5  # the glyph is glyph_size² cells
    detail_pixels: PositiveInt = 3  # cells a variant flips
    clutter_pixels: NonNegativeInt = 2  # stray ink pixels per image
    noise: NonNegativeFloat = 0.05  # standard deviation of the pixel noise
    train_per_class: PositiveInt = 80
    test_per_class: PositiveInt = 60  # changing it leaves the training images as they are
    image_size: PositiveInt = 12
    data_seed: NonNegativeInt = 0  # the images' only source of randomness


@register_dataset("glyphs", GlyphsOptions)
def glyphs(root: Path, splitter: Splitter, options: GlyphsOptions) -> DataSplits:
    """``num_groups × classes_per_group`` classes of small glyphs; class
    ``g·classes_per_group + k`` is variant ``k`` of group ``g``.

    A group fixes the coarse look: its ink and background colours and a random
    ``glyph_size``² binary glyph. Variant ``k`` flips ``detail_pixels`` cells of that glyph,
    a set of its own, disjoint from the other variants' sets, so any two classes of a group
    differ in exactly ``2·detail_pixels`` cells and look alike at a glance. Every image
    places its glyph at its own position, draws its ink contrast and background gain, adds
    ``clutter_pixels`` stray pixels of the ink colour (which can land beside the glyph and
    mimic a detail: the source of the set's genuine confusions, all within groups) and
    Gaussian pixel noise of standard deviation ``noise``. The rendering uses additions,
    multiplications and rounding only, so the bytes are the same on every machine.

    The images depend only on ``data_seed`` and the options, never on the training seed;
    changing ``test_per_class`` leaves the training images as they were. Augmentation:
    RandomCrop(image_size, padding 1), no flip (a mirrored glyph is another glyph).

    The defaults are a regime measured for an offline suite, which at convergence left no
    teacher-student gap to distil across (docs/suites-and-protocols.md, "A generated set:
    glyphs")."""
    num_groups, classes_per_group, glyph_size = options.num_groups, options.classes_per_group, options.glyph_size
    detail_pixels, image_size, data_seed = options.detail_pixels, options.image_size, options.data_seed
    cells = glyph_size * glyph_size
    if classes_per_group * detail_pixels > cells:
        raise ConfigError(
            f"dataset 'glyphs': {classes_per_group} variants of {detail_pixels} cells each need "
            f"{classes_per_group * detail_pixels} distinct cells, but a glyph of glyph_size "
            f"{glyph_size} has {cells}: lower classes_per_group or detail_pixels, or raise glyph_size"
        )
    if glyph_size > image_size:
        raise ConfigError(f"dataset 'glyphs': glyph_size {glyph_size} exceeds image_size {image_size}")
    num_classes = num_groups * classes_per_group
    style = _Style(stream_generator(data_seed, 0), num_groups, classes_per_group, glyph_size, detail_pixels)

    def generate(per_class: int, stream: int) -> TensorImageDataset:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        images = _render(style, labels, image_size, options.clutter_pixels, options.noise, stream_generator(data_seed, stream))
        return TensorImageDataset(images, labels)

    classes = [f"group{g}-variant{k}" for g in range(num_groups) for k in range(classes_per_group)]
    transforms = padded_crop_transforms(image_size, 1, flip=False, mean=HALF, std=HALF)
    return splitter.make(
        generate(options.train_per_class, 1), generate(options.test_per_class, 2), classes, image_size, transforms
    )


class _Style:
    """Each group's colours and glyph, and each class's glyph (its group's, with its own
    cells flipped)."""

    def __init__(self, generator: torch.Generator, num_groups: int, per_group: int, size: int,
                 detail: int) -> None:
        hues = (torch.arange(num_groups) + torch.rand(num_groups, generator=generator)) / num_groups
        order = torch.randperm(num_groups, generator=generator)  # background hue unrelated to ink hue
        value = 0.55 + 0.4 * torch.rand(num_groups, generator=generator)
        self.ink = torch.tensor([colorsys.hsv_to_rgb(float(h), 0.8, float(v)) for h, v in zip(hues, value)])
        self.paper = torch.tensor([colorsys.hsv_to_rgb(float(h), 0.5, 0.3) for h in hues[order]])
        base = torch.rand(num_groups, size * size, generator=generator) < 0.5
        glyphs = base.repeat_interleave(per_group, 0)
        for g in range(num_groups):
            cells = torch.randperm(size * size, generator=generator)[: per_group * detail].view(per_group, detail)
            for k in range(per_group):
                glyphs[g * per_group + k, cells[k]] ^= True
        self.glyphs = glyphs.view(-1, size, size).float()
        self.per_group = per_group


_CHUNK = 1024  # images rendered at once


def _render(style: _Style, labels: Tensor, size: int, clutter: int, noise: float,
            generator: torch.Generator) -> Tensor:
    """uint8 images N×3×size×size for ``labels``; every random draw comes from ``generator``."""
    n, glyph = len(labels), style.glyphs.shape[-1]
    group = labels // style.per_group
    x0 = torch.randint(0, size - glyph + 1, (n,), generator=generator)
    y0 = torch.randint(0, size - glyph + 1, (n,), generator=generator)
    contrast = 0.6 + 0.4 * torch.rand(n, generator=generator)
    gain = 0.8 + 0.4 * torch.rand(n, generator=generator)
    stray = torch.randint(0, size * size, (n, clutter), generator=generator)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        m = len(labels[part])
        ink = torch.zeros(m, size * size)
        ink.scatter_(1, stray[part], 1.0)
        ink = ink.view(m, size, size)
        for i, (x, y, c) in enumerate(zip(x0[part].tolist(), y0[part].tolist(), labels[part].tolist())):
            window = ink[i, y:y + glyph, x:x + glyph]
            window.copy_(torch.maximum(window, style.glyphs[c]))
        coverage = (ink * contrast[part, None, None]).unsqueeze(1)
        paper = style.paper[group[part]][:, :, None, None] * gain[part, None, None, None]
        ink_rgb = style.ink[group[part]][:, :, None, None]
        image = paper + (ink_rgb - paper) * coverage
        image = image + portable_noise((m, 3, size, size), noise, generator)
        out[part] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return out
