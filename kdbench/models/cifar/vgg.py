"""VGG (Simonyan & Zisserman, 2015) with batch norm for CIFAR, as in RepDistiller/mdistiller:
five conv blocks (max-pooled between the first four), global average pooling, one linear layer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import init_conv_bn

_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Conv3×3-BN-ReLU per width. (The original drops the block's last ReLU and applies it right
    after the block; keeping it inside gives the same function and parameter names, and makes a
    tapped block output the post-activation map; the last ReLU's input, its last BN's output,
    is the pre-activation map, mdistiller's ``preact_feats``.)"""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(Backbone):
    """VGG-BN with blocks ``block0`` … ``block4``."""

    stage_names = ("block0", "block1", "block2", "block3", "block4")

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = 3
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(in_channels, widths))
            in_channels = widths[-1]
        self.classifier = nn.Linear(512, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = F.max_pool2d(self.block0(x), 2)
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        x = self.block3(x)
        if h == 64:  # as the original: one more max-pool for 64×64 inputs (Tiny-ImageNet)
            x = F.max_pool2d(x, 2)
        return self.block4(x)

    @property
    def head(self) -> nn.Module:
        return self.classifier


@register_model
def vgg8(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg8"], num_classes)


@register_model
def vgg11(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg11"], num_classes)


@register_model
def vgg13(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg13"], num_classes)


@register_model
def vgg16(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg16"], num_classes)


@register_model
def vgg19(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg19"], num_classes)
