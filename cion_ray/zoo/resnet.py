"""ResNet and ResNet-IBN-a backbones with last stride 1, as ReID uses them.

Not taken from timm: timm has no IBN-a, and its ResNets cannot run layer4 at stride 1 without
dilation. Parameter names follow torchvision's ResNet (conv1, bn1, layerN.i.conv1, ...,
downsample.0/1), so weights trained here load into the released CION fine-tuning code and
vice versa. IBN-a (Pan et al., ECCV 2018): in layer1-3, each block's bn1 normalises the first
half of its channels with InstanceNorm (affine) and the rest with BatchNorm (`bn1.IN`, `bn1.BN`).

The output is the global-average-pooled feature: (N, 512 * expansion).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class IBN(nn.Module):
    """Instance norm on the first `ratio` of the channels, batch norm on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


def _norm(planes: int, ibn: bool) -> nn.Module:
    return IBN(planes) if ibn else nn.BatchNorm2d(planes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, ibn: bool = False, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, ibn: bool = False, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride on 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet(-IBN-a) feature extractor. `width` scales every stage (64 for the real models;
    the tiny test variants use less)."""

    def __init__(self, block: type[nn.Module], layers: list[int], ibn: bool = False,
                 last_stride: int = 1, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides = [1, 2, 2, last_stride]
        for i, (n, stride) in enumerate(zip(layers, strides)):
            # IBN-a: layer1-3 only; layer4 keeps plain BN
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, n, stride, ibn and i < 3))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, ibn, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
          101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}


def resnet(depth: int, ibn: bool = False, width: int = 64) -> ResNet:
    block, layers = DEPTHS[depth]
    return ResNet(block, layers, ibn=ibn, width=width)
