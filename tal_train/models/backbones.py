"""The backbone registry and the contract every backbone keeps (fast-reid ``BACKBONE_REGISTRY``,
timm ``register_model``, in this project's style).

**Contract** (`Backbone`): a stem and named stages, run in order. The TAL model and the exporter
use only this interface, never a concrete network:

* ``stem_names``: the modules run on the image. The first computing one starts with a
  zero-padded convolution of the normalized image (`input_conv`): the exporter folds the
  preprocessing into it. A stem without a `DomainNorm` does not depend on the stream, so the
  exporter tiles the streams after it.
* ``stage_names``: the modules after the stem, in order (only those built: a model matching on
  ``res4`` alone builds nothing past it).
* Every BatchNorm of the network is made by the ``norm_layer`` factory it is built with (the TAL
  model passes `DomainNorm`; no backbone knows about DSBN/DABN). Instance norms stay plain
  (shared by every stream: they carry no statistics).
* Module names are those of the upstream weights, so their state dicts load key for key.

**Registry entries** (`BackboneSpec`) declare, on the entry itself, the builder, the stage that
produces each scale TAL matches on (``res4``, ``res5``) with its stride and channels, the
published ImageNet weights (URL, file name, SHA-256 prefix) and the key filter of the upstream
layout. The model config's feature-map sizes come from the registered strides.

**Adding a backbone** = one file (the network and a ``BACKBONES`` tuple of its entries) plus its
line in `_families` below (docs/training.md shows the OSNet entry).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Mapping

from torch import Tensor, nn

from tal_infer.errors import TalError

NormFactory = Callable[[int], nn.Module]
KeyFilter = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
# The scales TAL matches on (paper: res4 = ResNet layer3, res5 = layer4); every entry names both.
SCALES = ("res4", "res5")


@dataclass(frozen=True)
class ScaleSpec:
    """Which stage yields a scale, at which stride (input pixels per map cell) and width.

    ``stride`` holds for ``last_stride=1``; with ``after_last_stride`` the stage follows the one
    whose stride ``last_stride`` sets, so its stride is multiplied by it (ResNet ``res5``).
    """
    stage: str
    stride: int
    channels: int
    after_last_stride: bool = False


@dataclass(frozen=True)
class PretrainedWeights:
    """Published ImageNet weights: where, the cache file name, and the file's SHA-256 prefix as
    published (torch.hub naming); ``sha256=None`` where upstream publishes no checksum."""
    url: str
    file_name: str
    sha256: str | None


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone (see the module docstring)."""
    name: str
    description: str
    builder: Callable[..., "Backbone"]   # (norm_layer, last_stride, last_stage) -> Backbone
    scales: Mapping[str, ScaleSpec]
    key_filter: KeyFilter                # upstream state dict -> keys of this network
    weights: PretrainedWeights | None = None
    last_strides: tuple[int, ...] = (2, 1)  # accepted values of last_stride; the first is the default
    size_multiple: int = 1               # image sides must be multiples of this (floor pooling)

    def strides(self, last_stride: int) -> dict[str, int]:
        return {s: spec.stride * (last_stride if spec.after_last_stride else 1)
                for s, spec in self.scales.items()}

    def build(self, norm_layer: NormFactory = nn.BatchNorm2d, last_stride: int | None = None,
              last_scale: str = SCALES[-1]) -> "Backbone":
        """The network with its norms from `norm_layer`, built up to the stage of `last_scale`."""
        last_stride = self.last_strides[0] if last_stride is None else last_stride
        net = self.builder(norm_layer=norm_layer, last_stride=last_stride,
                           last_stage=self.scales[last_scale].stage)
        net.spec = self
        return net


class Backbone(nn.Module):
    """Stem + named stages (the contract in the module docstring). Subclasses set
    ``stem_names`` and ``stage_names``; `BackboneSpec.build` sets ``spec``."""
    stem_names: tuple[str, ...] = ()
    stage_names: tuple[str, ...] = ()
    spec: BackboneSpec

    def stem_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stem_names]

    def input_conv(self) -> nn.Conv2d:
        """The convolution that sees the normalized image (preprocessing folds into it)."""
        return next(m for stem in self.stem_modules() for m in stem.modules()
                    if isinstance(m, nn.Conv2d))

    def forward_stem(self, x: Tensor) -> Tensor:
        for module in self.stem_modules():
            x = module(x)
        return x

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Stem output -> {scale: map} for every registered scale this network built."""
        scale_of = {spec.stage: scale for scale, spec in self.spec.scales.items()}
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in scale_of:
                out[scale_of[name]] = x
        return out

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_stages(self.forward_stem(x))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def _families() -> tuple[BackboneSpec, ...]:
    # One line per backbone file. Imported here, on first use, because the families import
    # this module for the contract above.
    from . import osnet, resnet

    return (*resnet.BACKBONES, *osnet.BACKBONES)


@functools.cache
def registry() -> dict[str, BackboneSpec]:
    """Every registered backbone by name, in registration order."""
    specs: dict[str, BackboneSpec] = {}
    for spec in _families():
        if spec.name in specs or set(spec.scales) != set(SCALES):
            raise ValueError(f"backbone {spec.name!r}: registered twice or scales "
                             f"{sorted(spec.scales)} are not {list(SCALES)}")
        specs[spec.name] = spec
    return specs


def backbone_names() -> list[str]:
    return list(registry())


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name`; `TalError` listing the valid names otherwise."""
    try:
        return registry()[name]
    except (KeyError, TypeError):
        raise TalError(f"unknown backbone {name!r}; registered: "
                       f"{', '.join(backbone_names())}") from None


def build_backbone(name: str, norm_layer: NormFactory = nn.BatchNorm2d,
                   last_stride: int | None = None, last_scale: str = SCALES[-1]) -> Backbone:
    """`BackboneSpec.build` of the registered `name`."""
    return backbone_spec(name).build(norm_layer, last_stride, last_scale)


def legacy_backbone_name(depth: int, ibn: str | None, base_width: int) -> str:
    """The registered name of a model config written before the registry, when
    ``depth``/``ibn``/``base_width`` described a ResNet (`TalError` if none is registered)."""
    from .resnet import resnet_name

    name = resnet_name(depth, ibn, base_width)
    if name not in registry():
        raise TalError(f"model config depth={depth}, ibn={ibn!r}, base_width={base_width} has no "
                       f"registered backbone; registered: {', '.join(backbone_names())}")
    return name
