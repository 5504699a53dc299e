"""ResNet C4 backbone of the bottom-up-attention detector (caffe max-pool, stride in the 1x1 convolutions).

ResNet-101 by default; depth and width come from the config (`stage_blocks`, `stem_channels`, `res2_channels`), so
that tests can run a tiny one. Module names follow detectron2, so the published checkpoint's keys
(`backbone.res4.22.conv3.norm.weight`, ...) load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lxmert_hf.detection.config import RegionFeatureExtractorConfig

BACKBONE_STRIDE = 16


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its BatchNorm, stored as the `norm` child like detectron2's `Conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False)
        # Plain BatchNorm (not frozen): the checkpoint carries running statistics for every norm layer.
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """A ResNet bottleneck with the stride on the first 1x1 convolution (MSRA / caffe style)."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int, dilation: int = 1):
        super().__init__()
        # Registered first so the state dict lists `shortcut` before `conv1`, as the checkpoint does.
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


def make_stage(
    num_blocks: int, in_channels: int, out_channels: int, first_stride: int, dilation: int = 1
) -> nn.Sequential:
    """Return `num_blocks` bottleneck blocks; only the first changes resolution and width."""
    blocks = []
    for index in range(num_blocks):
        blocks.append(
            BottleneckBlock(
                in_channels if index == 0 else out_channels,
                out_channels,
                out_channels // 4,
                stride=first_stride if index == 0 else 1,
                dilation=dilation,
            )
        )
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """7x7 stride-2 convolution, BatchNorm, ReLU and the caffe max-pool (no padding, ceil mode)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvNorm(3, channels, 7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        # Caffe pooled with ceil rounding and no padding; detectron2's default (padding 1, floor) shifts the grid.
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


class ResNetC4(nn.Module):
    """Stem plus res2-res4: `config.backbone_channels` (1024 for ResNet-101) at stride 16 (`res4`)."""

    def __init__(self, config: RegionFeatureExtractorConfig):
        super().__init__()
        width, blocks = config.res2_channels, config.stage_blocks
        self.stem = Stem(config.stem_channels)
        self.res2 = make_stage(blocks[0], config.stem_channels, width, first_stride=1)
        self.res3 = make_stage(blocks[1], width, 2 * width, first_stride=2)
        self.res4 = make_stage(blocks[2], 2 * width, config.backbone_channels, first_stride=2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.res4(self.res3(self.res2(self.stem(pixel_values))))


def make_res5_head(config: RegionFeatureExtractorConfig) -> nn.Sequential:
    """The res5 stage run on each pooled region: first stride 1 and dilation 2, so a 14x14 region stays 14x14."""
    blocks = config.stage_blocks[3]
    return make_stage(blocks, config.backbone_channels, config.feature_dim, first_stride=1, dilation=2)
