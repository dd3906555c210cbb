"""Weight initialisation shared by the CIFAR zoo."""

from __future__ import annotations

from torch import nn


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
