"""ResNet and IBN-Net backbones with a pluggable norm layer (paper Sec. 4.1: IBN-Net50 backbone).

The module tree and therefore the ``state_dict`` keys and shapes are those of torchvision's
ResNet (``ibn=None``) and of the official IBN-Net models (XingangPan/IBN-Net, ``resnet_ibn.py``)
when ``norm_layer`` is BatchNorm2d, so their ImageNet weights load unchanged (minus ``fc``, which
re-id does not use). The layouts followed:

* ResNet (torchvision, "v1.5"): stride on the 3x3 convolution; ``downsample = (conv1x1, norm)``.
* IBN-a: in layers 1-3 every block's ``bn1`` is an `IBN` (InstanceNorm2d(affine) on the first
  ``int(planes / 2)`` channels as ``.IN``, the norm on the rest as ``.BN``); layer 4 is plain.
* IBN-b: the stem ``bn1`` is InstanceNorm2d(affine); the *last* block of layer1 and layer2 applies
  ``IN`` = InstanceNorm2d(affine) after the residual addition, before the ReLU.

``norm_layer`` is a factory ``(num_features) -> nn.Module`` (timm style); the TAL model passes
`DomainNorm`. Instance norms stay plain (shared by all streams): they carry no statistics.
``base_width`` scales every width (64 = the standard networks; 16 = the tiny CPU preset).
``last_scale="res4"`` builds no layer4, for models that match on res4 only.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]
LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
IBN_CONFIG = {None: (None, None, None, None), "a": ("a", "a", "a", None), "b": ("b", "b", None, None)}
SCALE_LAYERS = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


class IBN(nn.Module):
    """IBN-a normalization: instance norm on the first half of the channels, `norm_layer` on the rest."""

    def __init__(self, planes: int, norm_layer: NormFactory):
        super().__init__()
        self.half = int(planes * 0.5)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = norm_layer(planes - self.half)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


def _first_norm(planes: int, norm_layer: NormFactory, ibn: str | None) -> nn.Module:
    return IBN(planes, norm_layer) if ibn == "a" else norm_layer(planes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormFactory, ibn: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _first_norm(planes, norm_layer, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.IN = nn.InstanceNorm2d(planes, affine=True) if ibn == "b" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormFactory, ibn: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _first_norm(planes, norm_layer, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm_layer(planes * 4)
        self.IN = nn.InstanceNorm2d(planes * 4, affine=True) if ibn == "b" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class ResNet(nn.Module):
    """Backbone only (no pooling/classifier): `forward_features` returns the stage outputs."""

    def __init__(self, depth: int, ibn: str | None = None, norm_layer: NormFactory = nn.BatchNorm2d,
                 last_stride: int = 2, base_width: int = 64, last_scale: str = "res5"):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"depth must be one of {sorted(LAYERS)}, got {depth}")
        if ibn not in IBN_CONFIG:
            raise ValueError(f"ibn must be None, 'a' or 'b', got {ibn!r}")
        if last_scale not in ("res4", "res5"):
            raise ValueError(f"last_scale must be 'res4' or 'res5', got {last_scale!r}")
        block = BasicBlock if depth < 50 else Bottleneck
        ibn_cfg = IBN_CONFIG[ibn]
        self.depth, self.ibn, self.base_width = depth, ibn, base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = (nn.InstanceNorm2d(base_width, affine=True) if ibn == "b"
                    else norm_layer(base_width))
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = base_width
        strides = (1, 2, 2, last_stride)
        num_layers = 4 if last_scale == "res5" else 3
        for i in range(num_layers):
            layer = self._make_layer(block, base_width * 2 ** i, LAYERS[depth][i], strides[i],
                                     norm_layer, ibn_cfg[i])
            self.add_module(f"layer{i + 1}", layer)
        self.channels = {f"res{i + 2}": base_width * 2 ** i * block.expansion
                         for i in range(num_layers)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int,
                    norm_layer: NormFactory, ibn: str | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                norm_layer(planes * block.expansion))
        layers = []
        for j in range(blocks):
            # IBN-b puts its instance norm only after the last block of the stage.
            block_ibn = None if ibn == "b" and j < blocks - 1 else ibn
            layers.append(block(self.inplanes, planes, stride if j == 0 else 1,
                                downsample if j == 0 else None, norm_layer, block_ibn))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Stage outputs {"res2": layer1, "res3": layer2, "res4": layer3[, "res5": layer4]}."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for scale in self.channels:
            x = getattr(self, SCALE_LAYERS[scale])(x)
            out[scale] = x
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def resnet(depth: int = 50, ibn: str | None = None, norm_layer: NormFactory = nn.BatchNorm2d,
           last_stride: int = 2, base_width: int = 64, last_scale: str = "res5") -> ResNet:
    """ResNet-`depth` (18/34/50/101), optionally IBN-Net-a/-b, with norms from `norm_layer`."""
    return ResNet(depth, ibn, norm_layer, last_stride, base_width, last_scale)
