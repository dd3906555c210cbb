"""ImageNet-style ResNet-18/34/50 (He et al., 2016) adapted to 32×32 inputs as in
RepDistiller's ``resnetv2``: a 3×3 stride-1 stem without max-pool, four stages of widths
64/128/256/512 (×4 for bottlenecks).

``ResNet50_imagenet_stem`` is SDD's 224-px CUB-200 teacher (SDD-CVPR2024, ``train_origin.py``,
lines 85-88): the stem is a 7×7 stride-2 convolution (``imagenet_stem_conv``), still without
max-pool, so a 224-px image leaves the last stage at 14×14."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import imagenet_stem_conv, init_conv_bn


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.out_relu = nn.ReLU()  # a module: its input is the block's pre-activation map

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.out_relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, plus shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)
        self.out_relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.out_relu(out + self.shortcut(x))


class ResNetV2(Backbone):
    """ResNet with ``num_blocks`` blocks per stage, for 32×32 inputs (with ``imagenet_stem``,
    SDD's 7×7 stride-2 stem for 224-px inputs)."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 100,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        layers = []
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            stage = [block(in_planes, planes, stride)]
            in_planes = planes * block.expansion
            stage += [block(in_planes, planes) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)
        if imagenet_stem:
            self.conv1 = imagenet_stem_conv(64)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    @property
    def head(self) -> nn.Module:
        return self.linear


@register_model
def ResNet18(num_classes: int = 100) -> ResNetV2:  # noqa: N802  (published name)
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model
def ResNet34(num_classes: int = 100) -> ResNetV2:  # noqa: N802
    return ResNetV2(BasicBlock, (3, 4, 6, 3), num_classes)


@register_model
def ResNet50(num_classes: int = 100) -> ResNetV2:  # noqa: N802
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes)


@register_model
def ResNet50_imagenet_stem(num_classes: int = 200) -> ResNetV2:  # noqa: N802
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, imagenet_stem=True)
