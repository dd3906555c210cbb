"""MLKD's strong augmentation (Jin et al., CVPR 2023; Jin-Ying/Multi-Level-Logit-
Distillation, mdistiller/dataset/cifar100.py), written with torchvision's functional ops on
uint8 images. Each operation takes a magnitude drawn uniformly from its range; the ranges
are the released code's, which are not torchvision's RandAugment: its enhance factors lie
in [0.05, 0.95] (they only ever weaken), rotation ±30°, shear and translation ±0.3,
posterize 4–7 bits, solarize threshold in [0, 256]. ``transforms.with_strong_augmentation``
puts it into a set's training transform."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


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
