"""Helpers shared by the CIFAR zoo."""

from __future__ import annotations

from torch import Tensor, nn


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) normal convolutions with zero bias, unit-scale BN: the init of RepDistiller's
    ResNet, WRN, VGG and MobileNetV2 (``normal_(0, sqrt(2 / (k*k*out)))`` is the same law)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def imagenet_stem_conv(out_channels: int) -> nn.Conv2d:
    """The stem convolution SDD puts on CIFAR-zoo models to train them at 224 px on CUB-200
    (shicaiwei123/SDD-CVPR2024 @ e412036, ``train_origin.py``, lines 44, 51, 57, 77, 86):
    7×7, stride 2, padding 3, no bias, with no max-pool after it (MobileNetV2 adds one; see
    its module). The authors swap it into a built model, so it keeps PyTorch's default
    initialisation rather than the model's own: the ``*_imagenet_stem`` models assign it
    after their init for the same reason."""
    return nn.Conv2d(3, out_channels, 7, 2, 3, bias=False)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: [N, g·c, H, W] → view [N, g, c] → transpose → [N, c·g, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
