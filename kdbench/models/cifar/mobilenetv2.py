"""MobileNetV2 (Sandler et al., 2018) for CIFAR as used in RepDistiller/mdistiller
(``mobile_half``: width multiplier 0.5, expansion 6; stem at stride 2; every inverted residual,
the first included, has its 1×1 expansion conv).

``MobileNetV2_imagenet_stem`` is SDD's 224-px CUB-200 student (SDD-CVPR2024, ``train_origin.py``,
lines 22-28 and 65-67): the 3×3 stride-2 stem becomes a 7×7 stride-2 convolution with 16
channels, BN, ReLU and a 2×2 max-pool, so a 224-px image leaves the last block group at 7×7
(the authors' AvgPool2d(8, ceil_mode=True) there averages that whole 7×7 map: the global
average pool). The authors build that stem after the model's init, so it keeps PyTorch's
default initialisation, as here."""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import imagenet_stem_conv, init_conv_bn

# (channels, blocks, stride of the first block) per block group, before the width multiplier;
# the first group has expansion 1, the others the model's expansion.
_SETTINGS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU, 3×3 depthwise-BN-ReLU, 1×1 linear projection-BN; identity shortcut
    when stride is 1 and the width is unchanged."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(Backbone):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``. Stages are the
    original's feature taps: after block groups 1, 2, 4 and 6 (resolutions 16, 8, 4, 2 at 32×32).
    ``imagenet_stem``: SDD's 7×7 stride-2 stem with a 2×2 max-pool, for 224-px inputs."""

    stage_names = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
    # Each stage ends with a linear bottleneck (BN, no activation): its output is its own
    # pre-activation map. (mdistiller's MobileNetV2 gives no ``preact_feats``.)
    preact_sources = {f"stage{i}": None for i in range(1, 5)}

    def __init__(
        self, expansion: int, width_mult: float, num_classes: int = 100, imagenet_stem: bool = False
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        groups = []
        for i, (c, n, s) in enumerate(_SETTINGS):
            out = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, 1 if i == 0 else expansion))
                channels = out
            groups.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*groups)
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        init_conv_bn(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)
        if imagenet_stem:
            stem_channels = int(32 * width_mult)
            self.conv1 = nn.Sequential(
                imagenet_stem_conv(stem_channels),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv2(self.blocks(self.conv1(x)))

    @property
    def head(self) -> nn.Module:
        return self.classifier


@register_model
def MobileNetV2(num_classes: int = 100) -> CifarMobileNetV2:  # noqa: N802  (published name)
    """RepDistiller's ``mobile_half``."""
    return CifarMobileNetV2(6, 0.5, num_classes)


@register_model
def MobileNetV2_imagenet_stem(num_classes: int = 200) -> CifarMobileNetV2:  # noqa: N802
    return CifarMobileNetV2(6, 0.5, num_classes, imagenet_stem=True)
