"""ResNet and IBN-Net backbones (paper Sec. 4.1: IBN-Net50 backbone) and their registry entries.

The module tree and therefore the ``state_dict`` keys and shapes are those of torchvision's
ResNet (``ibn=None``) and of the official IBN-Net models (XingangPan/IBN-Net, ``resnet_ibn.py``)
when ``norm_layer`` is BatchNorm2d, so their ImageNet weights load unchanged (minus ``fc``, which
re-id does not use: the key filter drops it). The layouts followed:

* ResNet (torchvision, "v1.5"): stride on the 3x3 convolution; ``downsample = (conv1x1, norm)``.
* IBN-a: in layers 1-3 every block's ``bn1`` is an `IBN` (InstanceNorm2d(affine) on the first
  ``int(planes / 2)`` channels as ``.IN``, the norm on the rest as ``.BN``); layer 4 is plain.
* IBN-b: the stem ``bn1`` is InstanceNorm2d(affine); the *last* block of layer1 and layer2 applies
  ``IN`` = InstanceNorm2d(affine) after the residual addition, before the ReLU.

Registered (`BACKBONES`): ``resnet{18,34,50,101}`` plain, ``_ibn_a`` and ``_ibn_b``, each at full
width (base width 64, with the official ImageNet weights) and at a quarter of it (``_x0_25``,
base width 16, no published weights: the ``tiny`` CPU preset uses ``resnet18_ibn_b_x0_25``).
Scales: res4 = layer3 (stride 16), res5 = layer4 (stride 16 x ``last_stride``).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .backbones import Backbone, BackboneSpec, NormFactory, PretrainedWeights, ScaleSpec
from .pretrained import drop_prefixes

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
IBN_CONFIG = {None: (None, None, None, None), "a": ("a", "a", "a", None), "b": ("b", "b", None, None)}
FULL_WIDTH = 64
WIDTHS = (FULL_WIDTH, 16)  # base widths registered: standard, and x0.25 for CPU presets and tests


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


class ResNet(Backbone):
    """Backbone only (no pooling/classifier): stem conv1-bn1-relu-maxpool, stages layer1..4."""
    stem_names = ("conv1", "bn1", "relu", "maxpool")

    def __init__(self, depth: int, ibn: str | None = None, norm_layer: NormFactory = nn.BatchNorm2d,
                 last_stride: int = 2, base_width: int = FULL_WIDTH, last_stage: str = "layer4"):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"depth must be one of {sorted(LAYERS)}, got {depth}")
        if ibn not in IBN_CONFIG:
            raise ValueError(f"ibn must be None, 'a' or 'b', got {ibn!r}")
        if last_stage not in ("layer3", "layer4"):
            raise ValueError(f"last_stage must be 'layer3' or 'layer4', got {last_stage!r}")
        block = BasicBlock if depth < 50 else Bottleneck
        ibn_cfg = IBN_CONFIG[ibn]
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = (nn.InstanceNorm2d(base_width, affine=True) if ibn == "b"
                    else norm_layer(base_width))
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = base_width
        strides = (1, 2, 2, last_stride)
        num_layers = int(last_stage[-1])
        for i in range(num_layers):
            layer = self._make_layer(block, base_width * 2 ** i, LAYERS[depth][i], strides[i],
                                     norm_layer, ibn_cfg[i])
            self.add_module(f"layer{i + 1}", layer)
        self.stage_names = tuple(f"layer{i + 1}" for i in range(num_layers))
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


# ---- registry entries ---------------------------------------------------------------------

_TORCHVISION = "https://download.pytorch.org/models/"
_IBN_NET = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
# Official ImageNet weights: torchvision IMAGENET1K_V1 and XingangPan/IBN-Net release v1.0
# (the files QAConv-GS loads through torch.hub). torch.hub naming: <name>-<sha256 prefix>.pth.
_WEIGHT_FILES = {
    (18, None): _TORCHVISION + "resnet18-f37072fd.pth",
    (34, None): _TORCHVISION + "resnet34-b627a593.pth",
    (50, None): _TORCHVISION + "resnet50-0676ba61.pth",
    (101, None): _TORCHVISION + "resnet101-63fe2227.pth",
    (18, "a"): _IBN_NET + "resnet18_ibn_a-2f571257.pth",
    (34, "a"): _IBN_NET + "resnet34_ibn_a-94bc1577.pth",
    (50, "a"): _IBN_NET + "resnet50_ibn_a-d9d0bb7b.pth",
    (101, "a"): _IBN_NET + "resnet101_ibn_a-59ea0ac6.pth",
    (18, "b"): _IBN_NET + "resnet18_ibn_b-bc2f3c11.pth",
    (34, "b"): _IBN_NET + "resnet34_ibn_b-04134c37.pth",
    (50, "b"): _IBN_NET + "resnet50_ibn_b-9ca61e85.pth",
    (101, "b"): _IBN_NET + "resnet101_ibn_b-c55f6dba.pth",
}


def _published(url: str) -> PretrainedWeights:
    file_name = url.rsplit("/", 1)[1]
    return PretrainedWeights(url, file_name, file_name.rsplit("-", 1)[1].split(".")[0])


def resnet_name(depth: int, ibn: str | None, base_width: int = FULL_WIDTH) -> str:
    """Registry name: ``resnet50``, ``resnet50_ibn_b``, ``resnet18_ibn_b_x0_25`` (width x0.25)."""
    width = "" if base_width == FULL_WIDTH else "_x" + f"{base_width / FULL_WIDTH:g}".replace(".", "_")
    return f"resnet{depth}" + (f"_ibn_{ibn}" if ibn else "") + width


def _entry(depth: int, ibn: str | None, base_width: int) -> BackboneSpec:
    channels = base_width * (1 if depth < 50 else 4)  # out channels of layer1
    width = "" if base_width == FULL_WIDTH else f", base width {base_width}"
    return BackboneSpec(
        name=resnet_name(depth, ibn, base_width),
        description=f"ResNet-{depth}" + (f"-IBN-{ibn}" if ibn else "") + width,
        builder=functools.partial(ResNet, depth, ibn, base_width=base_width),
        scales={"res4": ScaleSpec("layer3", 16, channels * 4),
                "res5": ScaleSpec("layer4", 16, channels * 8, after_last_stride=True)},
        key_filter=drop_prefixes("fc."),  # the ImageNet classifier
        weights=_published(_WEIGHT_FILES[depth, ibn]) if base_width == FULL_WIDTH else None)


BACKBONES = tuple(_entry(depth, ibn, width) for width in WIDTHS for depth in LAYERS
                  for ibn in IBN_CONFIG)
