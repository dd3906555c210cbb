"""``accents``: letters that only their diacritic tells apart, drawn in the fonts that
matplotlib ships."""

from __future__ import annotations

import math
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

from ..errors import ConfigError
from . import register_dataset
from .datasets import DataSplits, TensorImageDataset
from .generated import portable_noise, stream_generator
from .options import DatasetOptions
from .splitting import Splitter
from .transforms import HALF, padded_crop_transforms

# The 16 text faces in matplotlib's mpl-data/fonts/ttf that draw every accented Latin letter:
# DejaVu Sans, Sans Mono and Serif, and STIX General, each upright, bold, slanted and both.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
_CANVAS = 48  # template side, px: letters are drawn at 36 px on a baseline 38 px down
_POINT_SIZE, _BASELINE = 36, 38
_ACCENTED = range(0xC0, 0x180)  # Latin-1 Supplement and Latin Extended-A


class AccentsOptions(DatasetOptions):
    """The defaults are the offline suites' regime (docs/suites-and-protocols.md, "The
    offline regime", gives what harder variants measured)."""

    letters: str = Field("aeiou", min_length=1)  # base letters; each gives a group of classes
    variants_per_letter: PositiveInt = 10  # the letter and its first accented forms, by code point
    train_per_class: PositiveInt = 80
    test_per_class: PositiveInt = 50  # changing it leaves the training images as they are
    image_size: PositiveInt = 16
    max_rotation: NonNegativeFloat = Field(15.0, le=180)  # degrees, either way, uniform
    noise: NonNegativeFloat = 0.06  # standard deviation of the pixel noise
    data_seed: NonNegativeInt = 0  # the images' only source of randomness


@register_dataset("accents", AccentsOptions)
def accents(root: Path, splitter: Splitter, options: AccentsOptions) -> DataSplits:
    """Classes are a base letter and its precomposed accented forms (those whose Unicode
    decomposition starts with the letter: e, è, é, ê, ë, ē, ĕ, ė, ę, ě), the first
    ``variants_per_letter`` by code point, for each of ``letters``: the letters of a group
    share their shape and differ in a diacritic of a few pixels, so a teacher's mistakes and
    its probabilities over the other classes fall within a group.

    Every image draws its letter in one of the 16 faces of ``FONT_FILES`` (matplotlib's own
    fonts, rendered by its FreeType: nothing is downloaded), rotated by an angle drawn
    uniformly within ±``max_rotation`` degrees, scaled by 0.85-1.15 and shifted by up to 6%
    of the side, ink and paper of random tints with a random polarity (dark on light or
    light on dark, at least 0.2 apart in every channel), plus pixel noise. Its rendering
    (bilinear sampling at twice the resolution, then a 2×2 mean) uses additions,
    multiplications, divisions and rounding only, and the rotation's cosine and sine are
    rounded to 9 decimals, so for one version of matplotlib's FreeType the bytes are the
    same on every machine.

    The images depend only on ``data_seed`` and the options, never on the training seed;
    changing ``test_per_class`` leaves the training images as they were. Augmentation:
    RandomCrop(image_size, padding image_size/8), no flip (a mirrored é is an è)."""
    classes = _classes(options.letters, options.variants_per_letter)
    templates = torch.from_numpy(_templates(tuple(classes)))

    def generate(per_class: int, stream: int) -> TensorImageDataset:
        labels = torch.arange(len(classes)).repeat_interleave(per_class)
        return TensorImageDataset(_render(templates, labels, options, stream_generator(options.data_seed, stream)),
                                  labels)

    transforms = padded_crop_transforms(options.image_size, options.image_size // 8, flip=False, mean=HALF, std=HALF)
    return splitter.make(generate(options.train_per_class, 1), generate(options.test_per_class, 2), classes,
                         options.image_size, transforms)


def _classes(letters: str, variants_per_letter: int) -> list[str]:
    """Per base letter, itself and its accented forms that every face draws."""
    classes: list[str] = []
    for letter in letters:
        forms = [letter] + [chr(code) for code in _ACCENTED
                            if unicodedata.normalize("NFD", chr(code))[0] == letter and _every_face_draws(chr(code))]
        if len(forms) < 2 or letters.count(letter) > 1 or not letter.isalpha():
            raise ConfigError(f"dataset 'accents' option 'letters': {letter!r} is not a base letter with accented "
                              f"forms, or is repeated; use distinct letters such as 'aeiou', 'AEIOU' or 'cnsz'")
        classes += forms[:variants_per_letter]
    return classes


@cache
def _faces() -> list:
    from matplotlib import get_data_path
    from matplotlib.ft2font import FT2Font

    folder = Path(get_data_path()) / "fonts" / "ttf"
    faces = [FT2Font(str(folder / name)) for name in FONT_FILES]
    for face in faces:
        face.set_size(_POINT_SIZE, 72)
    return faces


def _every_face_draws(character: str) -> bool:
    return all(face.get_char_index(ord(character)) != 0 for face in _faces())


@cache
def _templates(classes: tuple[str, ...]) -> np.ndarray:
    """Coverage in [0, 1], classes × faces × 48 × 48: each letter unhinted and antialiased,
    centred across, its baseline on one row for every letter and face."""
    from matplotlib.ft2font import LoadFlags

    out = np.zeros((len(classes), len(FONT_FILES), _CANVAS, _CANVAS), np.float64)
    for c, character in enumerate(classes):
        for f, face in enumerate(_faces()):
            face.set_text(character, 0.0, flags=LoadFlags.NO_HINTING)
            face.draw_glyphs_to_bitmap(antialiased=True)
            bitmap = np.asarray(face.get_image(), np.float64) / 255
            height, width = bitmap.shape
            top = _BASELINE - (height - round(face.get_descent() / 64))
            left = (_CANVAS - width) // 2
            if top < 0 or left < 0 or top + height > _CANVAS:
                raise RuntimeError(f"accents: {character!r} in {FONT_FILES[f]} overflows the {_CANVAS}-px template")
            out[c, f, top:top + height, left:left + width] = bitmap
    return out


_CHUNK = 1024  # images rendered at once


def _render(templates: Tensor, labels: Tensor, options: AccentsOptions, generator: torch.Generator) -> Tensor:
    """uint8 images N×3×size×size for ``labels``; every random draw comes from ``generator``."""
    n, size = len(labels), options.image_size

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)

    face = torch.randint(0, len(FONT_FILES), (n,), generator=generator)
    angle = uniform(-math.radians(options.max_rotation), math.radians(options.max_rotation))
    magnification = uniform(0.85, 1.15)
    # Rounded to 9 decimals: a cosine's last bit may differ between CPUs, and must not
    # reach a pixel.
    cos = (angle.cos() * 1e9).round() / 1e9 / magnification
    sin = (angle.sin() * 1e9).round() / 1e9 / magnification
    shift_x, shift_y = uniform(-0.12, 0.12), uniform(-0.12, 0.12)
    dark, light = uniform(0.0, 0.4, 3), uniform(0.6, 1.0, 3)
    light_ink = torch.rand(n, generator=generator) < 0.5
    ink = torch.where(light_ink[:, None], light, dark)
    paper = torch.where(light_ink[:, None], dark, light)
    noise = portable_noise((n, 3, size, size), options.noise, generator, torch.float64)

    fine = 2 * size  # sampled at twice the resolution, then averaged 2×2
    grid = (torch.arange(fine, dtype=torch.float64) * 2 + 1) / fine - 1  # pixel centres in [-1, 1]
    across, down = grid[None, None, :], grid[None, :, None]
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        c, s = cos[part, None, None], sin[part, None, None]
        # Template coordinates (pixels) of each output sample: the inverse of the image's
        # rotation, magnification and shift.
        x = ((c * across - s * down + shift_x[part, None, None]) + 1) * (_CANVAS / 2) - 0.5
        y = ((s * across + c * down + shift_y[part, None, None]) + 1) * (_CANVAS / 2) - 0.5
        coverage = _bilinear(templates[labels[part], face[part]], x, y)
        coverage = (coverage[:, 0::2, 0::2] + coverage[:, 1::2, 0::2] + coverage[:, 0::2, 1::2]
                    + coverage[:, 1::2, 1::2]) / 4
        image = paper[part, :, None, None] + (ink[part] - paper[part])[:, :, None, None] * coverage[:, None]
        out[part] = ((image + noise[part]).clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def _bilinear(images: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``images`` (N×H×W) sampled at pixel coordinates ``x``, ``y`` (N×h×w), zero outside."""
    n, height, width = images.shape
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1)).reshape(n, -1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    # A corner outside the template reads the zero border.
    x0, x1 = (x0.clamp(-1, width) + 1).long(), ((x0 + 1).clamp(-1, width) + 1).long()
    y0, y1 = (y0.clamp(-1, height) + 1).long(), ((y0 + 1).clamp(-1, height) + 1).long()

    def at(row: Tensor, column: Tensor) -> Tensor:
        return padded.gather(1, (row * (width + 2) + column).reshape(n, -1)).reshape(x.shape)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
