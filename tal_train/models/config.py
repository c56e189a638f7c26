"""TALConfig: everything that defines a TAL model and how to feed it (stored in checkpoints).

Presets (paper Sec. 4.1): ``paper`` = IBN-Net50-b (``resnet50_ibn_b``), 384x128, res4 + res5,
neck 128, last stride 2; ``tiny`` = ResNet-18-IBN-b at a quarter of the width
(``resnet18_ibn_b_x0_25``, base width 16), 128x64, neck 64, for CPU tests and the demo (a
forward + backward of a batch of 8 takes a fraction of a second on CPU).

``backbone`` names a registered backbone (`tal_train.models.backbones`); the feature-map size of
each scale comes from its registered stride, and ``last_stride=None`` means the backbone's
default (2 for ResNets, 1 for OSNet). Configs written before the registry described the ResNet
by ``depth``/``ibn``/``base_width``; `from_dict` maps them to the registered name.

Switches for the paper's ablations: ``streams`` (Table 3: ("ds",) / ("di",) / both),
``di_norm`` (Table 4: "dabn" / "bn" / "avg"), ``ds_head`` (Table 5: "msda" / "avg" / "vote"),
``scales`` (Table 6: ("res4",) / ("res5",) / both), and ``dabn_stats`` (the two readings of
eqs. 3-5, `tal_train.models.norm`: "experts" / "own"; configs stored before it existed are
"experts", the only reading then). ``domains`` names the K source domains
(datasets for protocol p2, cameras for p1); it has no default because K shapes the model.

`to_dict` / `from_dict` use plain Python types only, so a checkpoint holding the config loads
with ``torch.load(..., weights_only=True)``. Invalid values raise `TalError` naming the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tal_infer.errors import TalError

from .backbones import SCALES, backbone_spec, legacy_backbone_name
from .norm import DABN_STATS, DI_NORMS, Stream

STREAMS = ("ds", "di")
DS_HEADS = ("msda", "avg", "vote")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Before the registry a config named its ResNet by these keys (defaults: the paper preset's).
LEGACY_BACKBONE_KEYS = {"depth": 50, "ibn": "b", "base_width": 64}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(backbone="resnet50_ibn_b", image_size=(384, 128), scales=SCALES,
                  neck_channels=128),
    "tiny": dict(backbone="resnet18_ibn_b_x0_25", image_size=(128, 64), scales=SCALES,
                 neck_channels=64),
}


@dataclass(frozen=True)
class TALConfig:
    """A TAL model; defaults are the ``paper`` preset (``domains`` must be given)."""
    domains: tuple[str, ...] = ()
    preset_name: str = "paper"
    backbone: str = "resnet50_ibn_b"
    last_stride: int | None = None  # None: the backbone's default
    image_size: tuple[int, int] = (384, 128)  # (height, width)
    scales: tuple[str, ...] = SCALES
    neck_channels: int = 128
    streams: tuple[str, ...] = STREAMS
    di_norm: str = "dabn"
    ds_head: str = "msda"
    dabn_stats: str = "experts"
    dabn_reduction: int = 16
    msda_reduction: int = 16
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, on [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for f in ("domains", "image_size", "scales", "streams", "mean", "std"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        _validate(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TALConfig":
        """A preset with fields overridden, e.g. ``TALConfig.preset("tiny", domains=("a", "b"))``."""
        if name not in PRESETS:
            raise TalError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        _check_keys(overrides, "model option")
        return cls(**{**PRESETS[name], "preset_name": name, **overrides})

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    def tiled_streams(self) -> tuple[Stream, ...]:
        """The norm streams of one batched pass, in tile order: the experts 0..K-1 (the DS
        stream), then "di" (`TALModel.extract` and the folded extractor both tile this way)."""
        experts = tuple(range(self.num_domains)) if "ds" in self.streams else ()
        return experts + (("di",) if "di" in self.streams else ())

    def scale_sizes(self) -> dict[str, tuple[int, int]]:
        """Feature map (h, w) of each configured scale for `image_size`, from the backbone's
        registered strides (every downsampling rounds up: ceil(side / stride))."""
        h, w = self.image_size
        strides = backbone_spec(self.backbone).strides(self.last_stride)
        return {s: (-(-h // strides[s]), -(-w // strides[s])) for s in self.scales}

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, str, int, float, None)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TALConfig":
        """The config of a ``to_dict`` (also one written before the backbone registry)."""
        data = _with_registered_backbone(data)
        _check_keys(data, "model config key")
        return cls(**data)


def _with_registered_backbone(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the pre-registry keys depth/ibn/base_width replaced by ``backbone``."""
    if not set(LEGACY_BACKBONE_KEYS) & set(data):
        return data
    data = dict(data)
    legacy = {k: data.pop(k, default) for k, default in LEGACY_BACKBONE_KEYS.items()}
    if "backbone" in data:
        raise TalError(f"model config has both backbone={data['backbone']!r} and the "
                       f"pre-registry keys {sorted(legacy)}")
    data["backbone"] = legacy_backbone_name(**legacy)
    return data


def _check_keys(data: dict[str, Any], what: str) -> None:
    known = {f.name for f in fields(TALConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TalError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise TalError(f"model config {name}={value!r} is not one of {list(allowed)}")


def _subset(name: str, values: tuple, allowed: tuple) -> None:
    if not values or len(set(values)) != len(values) or any(v not in allowed for v in values):
        raise TalError(f"model config {name}={list(values)} must be distinct values from "
                       f"{list(allowed)}")


def _validate(c: TALConfig) -> None:
    if not c.domains or any(not isinstance(d, str) or not d for d in c.domains):
        raise TalError("model config domains must name the source domains (one name per DS "
                       f"expert), got {list(c.domains)}")
    if len(set(c.domains)) != len(c.domains):
        raise TalError(f"model config domains has duplicate names: {list(c.domains)}")
    spec = backbone_spec(c.backbone)
    if c.last_stride is None:
        object.__setattr__(c, "last_stride", spec.last_strides[0])
    if c.last_stride not in spec.last_strides:
        raise TalError(f"model config last_stride={c.last_stride!r}: backbone {c.backbone} "
                       f"takes {list(spec.last_strides)}")
    _one_of("di_norm", c.di_norm, DI_NORMS)
    _one_of("ds_head", c.ds_head, DS_HEADS)
    _one_of("dabn_stats", c.dabn_stats, DABN_STATS)
    _subset("scales", c.scales, SCALES)
    _subset("streams", c.streams, STREAMS)
    # Canonical order (res4 before res5, ds before di): output names and arrays follow it.
    object.__setattr__(c, "scales", tuple(s for s in SCALES if s in c.scales))
    object.__setattr__(c, "streams", tuple(s for s in STREAMS if s in c.streams))
    if c.dabn_stats != "experts" and ("di" not in c.streams or c.di_norm == "bn"):
        raise TalError(f"model config dabn_stats={c.dabn_stats!r} is a reading of DABN; it needs "
                       "the DI stream with di_norm 'dabn' or 'avg'")
    for name in ("neck_channels", "dabn_reduction", "msda_reduction"):
        value = getattr(c, name)
        if not isinstance(value, int) or value < 1:
            raise TalError(f"model config {name}={value!r} must be a positive integer")
    if len(c.image_size) != 2 or min(c.image_size) < 32:
        raise TalError(f"model config image_size={list(c.image_size)} must be (height, width), "
                       "each at least 32 pixels")
    if any(side % spec.size_multiple for side in c.image_size):
        raise TalError(f"model config image_size={list(c.image_size)}: backbone {c.backbone} "
                       f"needs sides that are multiples of {spec.size_multiple}")
    if len(c.mean) != 3 or len(c.std) != 3 or min(c.std) <= 0:
        raise TalError("model config mean/std must be 3 RGB values each, std > 0")
