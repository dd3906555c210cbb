"""Wide Residual Networks (Zagoruyko & Komodakis, 2016), WRN-depth-k for CIFAR, in the
RepDistiller/mdistiller form: pre-activation blocks, a final BN-ReLU before pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import init_conv_bn


class BasicBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv ×2). When the width changes, the shortcut is a 1×1
    conv of the pre-activated input; otherwise it is the raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = (  # noqa: N815  (checkpoint key)
            None if in_planes == out_planes else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
        )
        self.relu1 = nn.ReLU()  # a module: its input is the previous stage's pre-activation map

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """``n`` blocks, the first one changing width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            BasicBlock(in_planes, out_planes, stride), *(BasicBlock(out_planes, out_planes, 1) for _ in range(n - 1))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(Backbone):
    """WRN-``depth``-``widen_factor``.

    Its stages end without an activation (pre-activation blocks); as in mdistiller, a stage's
    pre-activation map is the output of the BN that the next activation follows: the next
    stage's first BN, and for the last stage the final BN (the input of ``relu``)."""

    stage_names = ("block1", "block2", "block3")
    preact_sources = {"stage1": "block2.layer.0.relu1", "stage2": "block3.layer.0.relu1", "stage3": "relu"}

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))

    @property
    def head(self) -> nn.Module:
        return self.fc


@register_model
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
