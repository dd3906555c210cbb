"""CIFAR ResNets of He et al. (2016), "Deep Residual Learning", in the RepDistiller/mdistiller
variant (resnet8 … resnet110, and the 4× wider resnet8x4 / resnet32x4): a 3×3 stem and three
stages of basic blocks, the 2nd and 3rd at stride 2.

``resnet8x4_imagenet_stem`` and ``resnet32x4_imagenet_stem`` are SDD's 224-px CUB-200 models
(SDD-CVPR2024, ``train_origin.py``, lines 42-48 and 76-81): the stem is a 7×7 stride-2
convolution (``imagenet_stem_conv``), so a 224-px image leaves the last stage at 28×28; the
authors' AvgPool2d(28) there is the global average pool every kdbench model applies."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import imagenet_stem_conv, init_conv_bn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a (1×1 conv-BN when the shape changes) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.out_relu = nn.ReLU()  # a module: its input is the block's pre-activation map

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + shortcut)


class CifarResNet(Backbone):
    """ResNet-(6n+2) for 32×32 inputs with stage widths ``widths[1:]`` after a ``widths[0]`` stem
    (3×3 stride 1, or with ``imagenet_stem`` SDD's 7×7 stride 2 for 224-px inputs)."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 100,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], widths[1], n, 1)
        self.layer2 = self._make_layer(widths[1], widths[2], n, 2)
        self.layer3 = self._make_layer(widths[2], widths[3], n, 2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        if imagenet_stem:
            self.conv1 = imagenet_stem_conv(widths[0])

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_planes, planes, stride), *(BasicBlock(planes, planes) for _ in range(blocks - 1))
        )

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    @property
    def head(self) -> nn.Module:
        return self.fc


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model
def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


@register_model
def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


@register_model
def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


@register_model
def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


@register_model
def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


@register_model
def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


@register_model
def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


@register_model
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


@register_model
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)


@register_model
def resnet8x4_imagenet_stem(num_classes: int = 200) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, imagenet_stem=True)


@register_model
def resnet32x4_imagenet_stem(num_classes: int = 200) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, imagenet_stem=True)
