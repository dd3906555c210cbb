"""ShuffleNet (Zhang et al., 2018) for CIFAR as in RepDistiller/mdistiller (``ShuffleV1``:
3 groups, stage widths 240/480/960, 4/8/4 units, 1×1 stem without downsampling).

``ShuffleV1_imagenet_stem`` is SDD's 224-px CUB-200 student (SDD-CVPR2024, ``train_origin.py``,
lines 49-53): the 1×1 stem becomes a 7×7 stride-2 convolution (``imagenet_stem_conv``), so a
224-px image leaves the last stage at 14×14 (the authors' AvgPool2d(14) there is the global
average pool)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import channel_shuffle, imagenet_stem_conv


class Bottleneck(nn.Module):
    """ShuffleNet unit: grouped 1×1, shuffle, 3×3 depthwise, grouped 1×1. At stride 2 the output is
    concatenated with a 3×3 average-pooled input; at stride 1 it is added to the input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups  # the stem's 24 channels are not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.out_relu = nn.ReLU()  # a module: its input is the unit's pre-activation map

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.first_groups > 1:
            out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return self.out_relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return self.out_relu(out + x)


class ShuffleNetV1(Backbone):
    """ShuffleNet with ``groups`` groups; each stage starts with a stride-2 unit. The stem is a
    1×1 convolution, or with ``imagenet_stem`` SDD's 7×7 stride 2 for 224-px inputs."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        out_planes: tuple[int, int, int],
        num_blocks: tuple[int, int, int],
        groups: int,
        num_classes: int = 100,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = imagenet_stem_conv(24) if imagenet_stem else nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        layers = []
        for planes, blocks in zip(out_planes, num_blocks):
            # the stride-2 unit concatenates its input, so it only produces the remaining channels
            units = [Bottleneck(in_planes, planes - in_planes, 2, groups)]
            units += [Bottleneck(planes, planes, 1, groups) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*units))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    @property
    def head(self) -> nn.Module:
        return self.linear


@register_model
def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:  # noqa: N802  (published name)
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes)


@register_model
def ShuffleV1_imagenet_stem(num_classes: int = 200) -> ShuffleNetV1:  # noqa: N802
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, imagenet_stem=True)
