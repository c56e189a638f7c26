"""OSNet and OSNet-AIN backbones and their registry entries (Zhou et al., ICCV 2019, "Omni-Scale
Feature Learning for Person Re-Identification"; OSNet-AIN: Zhou et al., TPAMI 2021, "Learning
Generalisable Omni-Scale Representations for Person Re-Identification").

Written from the papers' description:

* **Lite 3x3** (Fig. 3): a pointwise 1x1 convolution, then a depthwise 3x3, norm, ReLU: a
  depthwise-separable 3x3 at a fraction of the cost of a full one.
* **Omni-scale residual block** (Fig. 4): 1x1 conv + norm + ReLU down to a quarter of the output
  width; T = 4 streams of t = 1..4 stacked lite 3x3 layers (receptive fields 3, 5, 7, 9); the
  **unified aggregation gate**, one mini-network (GAP, 1x1 FC to C/16, ReLU, 1x1 FC, sigmoid)
  shared by every stream, weighs each stream's channels by its own content; the weighted streams
  are summed; a linear 1x1 conv + norm restores the width; residual addition (1x1 conv + norm on
  the shortcut where the widths differ), ReLU.
* **Network** (Table 1): conv1 7x7/2 + norm + ReLU, 3x3/2 max-pool; conv2, conv3, conv4 of two
  blocks each, a transition (1x1 conv + norm + ReLU, 2x2/2 average pool) after conv2 and conv3;
  conv5 = 1x1 conv + norm + ReLU. Widths (conv1, conv2, conv3, conv4): x1.0 64, 256, 384, 512;
  x0.25 16, 64, 96, 128.
* **OSNet-AIN**: instance normalization where the architecture search placed it: the stem
  normalizes with InstanceNorm2d, and the blocks marked in `AIN_BLOCKS` apply InstanceNorm2d to
  the residual branch (whose last 1x1 conv then has no norm) before the addition.

Module names follow torchreid (KaiyangZhou/deep-person-reid, ``osnet.py`` / ``osnet_ain.py``), so
its public ImageNet state dicts load key for key once the key filter drops the heads ``fc.*`` and
``classifier.*``: ``conv1.{conv,bn}``; OSNet blocks hold the streams as ``conv2a``, ``conv2b.<i>``,
``conv2c.<i>``, ``conv2d.<i>`` and the transition is the last item of conv2 / conv3 (``conv2.2``);
OSNet-AIN blocks hold them as ``conv2.<t>.layers.<i>`` and the transitions are ``pool2`` /
``pool3``; both: ``gate.{fc1,fc2}``, ``conv3``, ``downsample``, ``IN``, ``conv5``.

Scales: res4 = conv3 after its transition (stride 16), res5 = conv5 (stride 16: OSNet does not
downsample after conv3, so ``last_stride`` is 1). The transitions' average pools floor odd sizes,
so image sides must be multiples of 16. ImageNet weights: torchreid's model zoo (Google Drive,
``<name>_imagenet.pth``, the file name torchreid caches them under); it publishes no checksum.
"""
from __future__ import annotations

import functools
import torch
from torch import Tensor, nn

from .backbones import Backbone, BackboneSpec, NormFactory, PretrainedWeights, ScaleSpec
from .pretrained import drop_prefixes

STREAMS = 4            # T, the number of scales a block sees
BLOCK_REDUCTION = 4    # block bottleneck: out channels / 4
GATE_REDUCTION = 16    # aggregation gate hidden width: channels / 16
WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_25": (16, 64, 96, 128)}
# OSNet-AIN: which of the two blocks of conv2, conv3, conv4 normalize their residual branch with IN.
AIN_BLOCKS = ((True, True), (False, True), (True, False))


class ConvNorm(nn.Module):
    """conv -> norm (optional) -> ReLU (optional); torchreid's ConvLayer / Conv1x1 /
    Conv1x1Linear (keys ``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 norm: nn.Module | None = None, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.bn = norm
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.relu is None else self.relu(x)


class LiteConv3x3(nn.Module):
    """Lite 3x3 (Fig. 3): pointwise 1x1, depthwise 3x3, norm, ReLU."""

    def __init__(self, channels: int, norm_layer: NormFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.bn = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


def _lite_stack(channels: int, depth: int, norm_layer: NormFactory) -> nn.Sequential:
    return nn.Sequential(*(LiteConv3x3(channels, norm_layer) for _ in range(depth)))


class LiteStream(nn.Module):
    """One stream of an OSNet-AIN block (torchreid's LightConvStream: key ``layers``)."""

    def __init__(self, channels: int, depth: int, norm_layer: NormFactory):
        super().__init__()
        self.layers = _lite_stack(channels, depth, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class AggregationGate(nn.Module):
    """Unified aggregation gate (Sec. 3.2): channel weights GAP -> FC -> ReLU -> FC -> sigmoid
    of the stream itself; one instance is shared by every stream of a block."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // GATE_REDUCTION
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))


class OmniScaleBlock(nn.Module):
    """Omni-scale residual block (Fig. 4). ``ain``: OSNet-AIN's module layout; ``instance_norm``:
    IN on the residual branch before the addition (OSNet-AIN's IN blocks)."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory,
                 ain: bool = False, instance_norm: bool = False):
        super().__init__()
        mid = out_channels // BLOCK_REDUCTION
        self.conv1 = ConvNorm(in_channels, mid, 1, norm=norm_layer(mid))
        if ain:
            self.conv2 = nn.ModuleList(LiteStream(mid, t, norm_layer)
                                       for t in range(1, STREAMS + 1))
        else:  # OSNet names its streams conv2a (one layer), conv2b (two), ...
            self.conv2a = LiteConv3x3(mid, norm_layer)
            for t, letter in zip(range(2, STREAMS + 1), "bcd"):
                self.add_module(f"conv2{letter}", _lite_stack(mid, t, norm_layer))
        self.gate = AggregationGate(mid)
        self.conv3 = ConvNorm(mid, out_channels, 1, relu=False,
                              norm=None if instance_norm else norm_layer(out_channels))
        self.downsample = (None if in_channels == out_channels else
                           ConvNorm(in_channels, out_channels, 1, norm=norm_layer(out_channels),
                                    relu=False))
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def streams(self) -> list[nn.Module]:
        if hasattr(self, "conv2"):
            return list(self.conv2)
        return [getattr(self, f"conv2{letter}") for letter in "abcd"[:STREAMS]]

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.conv1(x)
        branch = self.conv3(sum(self.gate(stream(x1)) for stream in self.streams()))
        if self.IN is not None:
            branch = self.IN(branch)
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(branch + shortcut)


def _transition(channels: int, norm_layer: NormFactory) -> nn.Sequential:
    """1x1 conv + norm + ReLU, 2x2/2 average pool (halves the map)."""
    return nn.Sequential(ConvNorm(channels, channels, 1, norm=norm_layer(channels)),
                         nn.AvgPool2d(2, 2))


# Stages after the stem, in order (OSNet-AIN keeps its transitions as stages of their own).
STAGES = {False: ("conv2", "conv3", "conv4", "conv5"),
          True: ("conv2", "pool2", "conv3", "pool3", "conv4", "conv5")}


def _stages(widths: tuple[int, int, int, int], norm_layer: NormFactory, ain: bool,
            last_stage: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of the stages after the stem, up to `last_stage`."""
    stages: list[tuple[str, nn.Module]] = []
    for i, (cin, cout) in enumerate(zip(widths[:3], widths[1:])):
        blocks = [OmniScaleBlock(cin if j == 0 else cout, cout, norm_layer, ain,
                                 ain and AIN_BLOCKS[i][j]) for j in range(2)]
        transition = [_transition(cout, norm_layer)] if i < 2 else []
        if ain:
            stages += [(f"conv{i + 2}", nn.Sequential(*blocks))]
            stages += [(f"pool{i + 2}", t) for t in transition]
        else:
            stages += [(f"conv{i + 2}", nn.Sequential(*blocks, *transition))]
        if last_stage in (name for name, _ in stages):
            return stages
    c = widths[3]
    return stages + [("conv5", ConvNorm(c, c, 1, norm=norm_layer(c)))]


class OSNet(Backbone):
    """OSNet (``ain=False``) or OSNet-AIN at the given widths, stages up to `last_stage`."""
    stem_names = ("conv1", "maxpool")

    def __init__(self, widths: tuple[int, int, int, int], norm_layer: NormFactory = nn.BatchNorm2d,
                 last_stride: int = 1, last_stage: str = "conv5", ain: bool = False):
        super().__init__()
        if last_stride != 1:
            raise ValueError(f"OSNet keeps stride 16 after conv3; last_stride must be 1, "
                             f"got {last_stride}")
        if last_stage not in STAGES[ain]:
            raise ValueError(f"last_stage must be one of {STAGES[ain]}, got {last_stage!r}")
        c0 = widths[0]
        self.conv1 = ConvNorm(3, c0, 7, 2, norm=nn.InstanceNorm2d(c0, affine=True) if ain
                              else norm_layer(c0))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = _stages(widths, norm_layer, ain, last_stage)
        for name, module in stages:
            self.add_module(name, module)
        self.stage_names = tuple(name for name, _ in stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


# ---- registry entries ---------------------------------------------------------------------

_DRIVE = "https://drive.google.com/uc?export=download&id="
# torchreid's model zoo: ImageNet weights by Google Drive file id.
_DRIVE_IDS = {
    "osnet_x1_0": "1LaG1EJpHrxdAxKnSCJ_i0u-nbxSAeiFY",
    "osnet_x0_25": "1rb8UN5ZzPKRc_xvtHlyDh-cSz88YX9hs",
    "osnet_ain_x1_0": "1-CaioD9NaqbHK_kzSMW8VE4_3KcsRjEo",
    "osnet_ain_x0_25": "1SxQt2AvmEcgWNhaRb2xC4rP6ZwVDP0Wt",
}


def _entry(width: str, ain: bool) -> BackboneSpec:
    name = f"osnet{'_ain' if ain else ''}_{width}"
    widths = WIDTHS[width]
    return BackboneSpec(
        name=name,
        description=f"OSNet{'-AIN' if ain else ''} {width.replace('_', '.')}",
        builder=functools.partial(OSNet, widths, ain=ain),
        scales={"res4": ScaleSpec("pool3" if ain else "conv3", 16, widths[2]),
                "res5": ScaleSpec("conv5", 16, widths[3])},
        key_filter=drop_prefixes("fc.", "classifier."),  # embedding FC and ImageNet classifier
        weights=PretrainedWeights(_DRIVE + _DRIVE_IDS[name], f"{name}_imagenet.pth", None),
        last_strides=(1,),
        size_multiple=16)


BACKBONES = tuple(_entry(width, ain) for ain in (False, True) for width in WIDTHS)
