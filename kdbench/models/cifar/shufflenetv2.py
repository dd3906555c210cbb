"""ShuffleNet V2 (Ma et al., 2018) for CIFAR as in RepDistiller/mdistiller (``ShuffleV2``: net
size 1, stage widths 116/232/464, 3/7/3 basic units after each down-sampling unit, 1×1 stem)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models import register_model
from kdbench.models.base import Backbone

from .common import channel_shuffle


class BasicBlock(nn.Module):
    """Split channels in half; the second half goes through 1×1-BN-ReLU, 3×3 depthwise-BN,
    1×1-BN-ReLU; concatenate with the untouched first half; shuffle.

    The last ReLU is applied after the concatenation and shuffle, to every channel: the
    untouched half is a ReLU's or a concatenation of ReLUs' output (every unit's input is),
    so it is ≥ 0 and the ReLU leaves it as it is, and its gradient there is the same (zero
    only where the value is 0, whose own ReLU already gave it zero gradient). The ReLU's
    input is then the unit's pre-activation map, mdistiller's ``preact`` up to the shuffle's
    channel order (mdistiller keeps it unshuffled)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.out_relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        return self.out_relu(channel_shuffle(torch.cat([x1, out], 1), 2))


class DownBlock(nn.Module):
    """Stride-2 unit: left branch 3×3 depthwise-BN, 1×1-BN-ReLU; right branch 1×1-BN-ReLU, 3×3
    depthwise-BN, 1×1-BN-ReLU; concatenate (left, right); shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(Backbone):
    """ShuffleNet V2 with stage widths ``out_channels[:3]`` and a final 1×1 conv to
    ``out_channels[3]`` channels (BN-ReLU) before pooling."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self, out_channels: tuple[int, int, int, int], num_blocks: tuple[int, int, int], num_classes: int = 100
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        layers = []
        for channels, blocks in zip(out_channels[:3], num_blocks):
            units = [DownBlock(in_channels, channels), *(BasicBlock(channels) for _ in range(blocks))]
            layers.append(nn.Sequential(*units))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))

    @property
    def head(self) -> nn.Module:
        return self.linear


@register_model
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:  # noqa: N802  (published name)
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
