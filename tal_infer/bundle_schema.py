"""The export bundle's manifest as one typed description, shared by the writer (`tal_export`)
and the reader (`tal_infer.bundle`): docs/bundle.md in code.

`Manifest.to_json` is what tal-export writes and `Manifest.from_json` is what the runtime
accepts, so a field added on one side cannot drift from the other (a test round-trips every
exported manifest). A manifest is untrusted data: `from_json` checks every value the runtime
uses for its type and for sane bounds (`LIMITS`) and raises `ManifestError` naming the field,
so a manifest asking for a 10^6-pixel input, a 10^400 channel count or a feature name that
is not a stream/scale pair is refused when the bundle opens, before any image is read.
Informational sections (``parity``, ``checkpoint``, ``model_config``, ``tensorrt``) are kept
as plain JSON objects; the parts that use them check what they read.

Format versions: 1 (no descriptor), 2 (the global descriptor), 3 (the torch backend's weights
as ``extractor.safetensors`` instead of a torch.export archive). The runtime reads all three;
only the torch backend needs version 3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .features import DESCRIPTOR, feature_name, split_feature_name
from .heads import MODES
from .precision import Precision, precision_of_manifest

FORMAT = "tal-reid-bundle"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
EXTRACTOR = "extractor.onnx"
WEIGHTS = "extractor.safetensors"
HEADS = "heads.npz"
MATCHER = "matcher.onnx"
MATCHER_TRT = "matcher_trt.onnx"
EXTRACTOR_PLAN = "extractor.plan"
MATCHER_PLAN = "matcher.plan"
FEATURE_FILES = (EXTRACTOR, WEIGHTS, EXTRACTOR_PLAN)  # whose bytes decide the features
STREAMS = ("ds", "di")

# Bounds on what a manifest may declare (far above any real model, far below what would let
# a planted manifest allocate without limit).
LIMITS = {
    "image_side": (8, 4096),    # input.height, input.width
    "channels": (1, 4096),      # C of a feature map
    "domains": (1, 64),         # K experts
    "map_side": (1, 1024),      # h, w of a feature map
    "descriptor": (1, 65536),   # D
    "opset": (1, 100),
}
MAX_NAME = 200  # characters of a name (run name, scale, domain)


class ManifestError(ValueError):
    """A manifest value of the wrong type or out of bounds; the message names the field."""


@dataclass(frozen=True)
class InputSection:
    """What the extractor takes: uint8 NHWC BGR images of ``height x width``, bilinear resize;
    ``mean``/``std`` are folded into the graph and recorded for readers of the manifest."""
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                "height": self.height, "width": self.width, "resize": "bilinear",
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: Any) -> "InputSection":
        data = _object(data, "input")
        fixed = {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                 "resize": "bilinear"}
        for key, value in fixed.items():
            if data.get(key, value) != value:
                raise ManifestError(f"input.{key} must be {value!r}, not {data.get(key)!r}")
        return cls(_int(data.get("height"), "input.height", "image_side"),
                   _int(data.get("width"), "input.width", "image_side"),
                   _floats(data.get("mean", [0.0] * 3), "input.mean", 3),
                   _floats(data.get("std", [1.0] * 3), "input.std", 3, positive=True))


@dataclass(frozen=True)
class FeatureSection:
    """One extractor output ``<stream>_<scale>``: DS ``[N, K, C, h, w]``, DI ``[N, C, h, w]``
    (``shape`` without N)."""
    name: str
    shape: tuple[int, ...]

    @property
    def stream(self) -> str:
        return split_feature_name(self.name)[0]

    @property
    def scale(self) -> str:
        return split_feature_name(self.name)[1]

    @property
    def hw(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    @property
    def match_shape(self) -> tuple[int, ...]:
        """Per-item shape in match layout: DS (K, HW, C), DI (HW, C)."""
        hw = self.hw[0] * self.hw[1]
        return (self.shape[0], hw, self.shape[1]) if len(self.shape) == 4 else (hw, self.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"shape": [-1, *self.shape], "hw": list(self.hw)}

    @classmethod
    def from_json(cls, name: Any, data: Any) -> "FeatureSection":
        where = f"features.{name}"
        if not isinstance(name, str) or "_" not in name or len(name) > MAX_NAME:
            raise ManifestError(f"feature name {name!r} is not <stream>_<scale>")
        stream = split_feature_name(name)[0]
        data = _object(data, where)
        shape = data.get("shape")
        rank = {"ds": 5, "di": 4}.get(stream)
        if rank is None:
            raise ManifestError(f"{where}: stream {stream!r} is not one of {', '.join(STREAMS)}")
        if not isinstance(shape, list) or len(shape) != rank or shape[0] not in (-1, None):
            raise ManifestError(f"{where}.shape must be [-1, {'K, ' if stream == 'ds' else ''}"
                                f"C, h, w], not {_short(shape)}")
        dims = shape[1:]
        kinds = (["domains"] if stream == "ds" else []) + ["channels", "map_side", "map_side"]
        parsed = tuple(_int(d, f"{where}.shape", kind) for d, kind in zip(dims, kinds))
        if "hw" in data and _ints(data["hw"], f"{where}.hw", 2) != parsed[-2:]:
            raise ManifestError(f"{where}.hw {_short(data['hw'])} is not the shape's h, w "
                                f"{list(parsed[-2:])}")
        return cls(name, parsed)


@dataclass(frozen=True)
class MatchingSection:
    """Which stream scores the final score sums (``score``), each stream's head mode, and the
    scales the heads read."""
    score: tuple[str, ...]
    modes: Mapping[str, str]
    scales: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"score": list(self.score),
                "streams": {s: {"mode": m} for s, m in self.modes.items()},
                "scales": list(self.scales)}

    @classmethod
    def from_json(cls, data: Any) -> "MatchingSection":
        data = _object(data, "matching")
        score = _names(data.get("score"), "matching.score")
        scales = _names(data.get("scales"), "matching.scales")
        streams = _object(data.get("streams"), "matching.streams")
        modes = {}
        for stream in score:
            entry = _object(streams.get(stream), f"matching.streams.{stream}")
            if entry.get("mode") not in MODES:
                raise ManifestError(f"matching.streams.{stream}.mode must be one of "
                                    f"{', '.join(MODES)}, not {_short(entry.get('mode'))}")
            modes[stream] = entry["mode"]
        if not score or not scales:
            raise ManifestError("matching.score and matching.scales must not be empty")
        return cls(score, modes, scales)


@dataclass(frozen=True)
class DescriptorSection:
    """The global descriptor output ``[N, dim]`` (format version 2); ``spec`` keeps the rest of
    the section (method, the head's sizes, the distillation report) as written."""
    dim: int
    spec: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"shape": [-1, self.dim], **{k: v for k, v in self.spec.items() if k != "shape"}}

    @classmethod
    def from_json(cls, data: Any) -> "DescriptorSection":
        data = _object(data, "descriptor")
        shape = data.get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or shape[0] not in (-1, None):
            raise ManifestError(f"descriptor.shape must be [-1, D], not {_short(shape)}")
        return cls(_int(shape[1], "descriptor.shape", "descriptor"),
                   {k: v for k, v in data.items() if k != "shape"})


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, name: str, data: Any) -> "FileEntry":
        where = f"files[{name!r}]"
        data = _object(data, where)
        sha = data.get("sha256", "")
        size = data.get("bytes", 0)
        if not isinstance(sha, str) or (sha and (len(sha) != 64 or not all(
                c in "0123456789abcdef" for c in sha))):
            raise ManifestError(f"{where}.sha256 must be a hex SHA-256, not {_short(sha)}")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2 ** 53:
            raise ManifestError(f"{where}.bytes must be a byte count, not {_short(size)}")
        return cls(sha, size)


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json (docs/bundle.md)."""
    run_name: str
    input: InputSection
    domains: tuple[str, ...]
    streams: tuple[str, ...]
    scales: tuple[str, ...]
    features: Mapping[str, FeatureSection]
    precision: Precision
    matching: MatchingSection
    opset: int
    format_version: int = FORMAT_VERSION
    toolkit_version: str = ""
    created: str = ""
    descriptor: DescriptorSection | None = None
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    model_config: Mapping[str, Any] | None = None
    checkpoint: Mapping[str, Any] | None = None
    parity: Mapping[str, Any] | None = None
    tensorrt: Mapping[str, Any] | None = None

    @property
    def output_names(self) -> list[str]:
        """Every extractor output in graph order: the maps, then the descriptor."""
        return [*self.features, *([DESCRIPTOR] if self.descriptor else [])]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT, "format_version": self.format_version,
            "toolkit_version": self.toolkit_version, "created": self.created,
            "run_name": self.run_name, "checkpoint": self.checkpoint,
            "input": self.input.to_json(),
            "domains": {"names": list(self.domains), "count": len(self.domains)},
            "streams": list(self.streams), "scales": list(self.scales),
            "features": {n: f.to_json() for n, f in self.features.items()},
            "dtype": self.precision.dtype, "precision": self.precision.to_manifest(),
            "opset": self.opset, "matching": self.matching.to_json(),
            "model_config": self.model_config, "parity": self.parity}
        if self.descriptor is not None:
            data["descriptor"] = self.descriptor.to_json()
        if self.tensorrt is not None:
            data["tensorrt"] = self.tensorrt
        data["files"] = {n: e.to_json() for n, e in self.files.items()}
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        """The manifest a JSON object describes; `ManifestError` naming the first bad field.
        The caller has checked ``format`` and ``format_version`` (`check_format`)."""
        data = _object(data, "manifest")
        version = check_format(data)
        features = {n: FeatureSection.from_json(n, f)
                    for n, f in _object(data.get("features"), "features").items()}
        if not features:
            raise ManifestError("features must name at least one output")
        matching = MatchingSection.from_json(data.get("matching"))
        for stream in matching.score:
            for scale in matching.scales:
                if feature_name(stream, scale) not in features:
                    raise ManifestError(f"matching scores {stream}/{scale}, but features lack "
                                        f"{feature_name(stream, scale)}")
        try:
            precision = precision_of_manifest(data)
        except ValueError as err:
            raise ManifestError(str(err)) from None
        descriptor = None
        if "descriptor" in data:
            if version < 2:
                raise ManifestError("a descriptor section needs format version 2 or later")
            descriptor = DescriptorSection.from_json(data["descriptor"])
        domains = _object(data.get("domains", {"names": []}), "domains")
        files = _object(data.get("files", {}), "files")
        return cls(
            run_name=_text(data.get("run_name", ""), "run_name"),
            input=InputSection.from_json(data.get("input")),
            domains=_names(domains.get("names", []), "domains.names", empty_ok=True),
            streams=_names(data.get("streams", list(STREAMS)), "streams"),
            scales=_names(data.get("scales", list(matching.scales)), "scales"),
            features=features, precision=precision, matching=matching,
            opset=_int(data.get("opset", 18), "opset", "opset"),
            format_version=version,
            toolkit_version=_text(data.get("toolkit_version", ""), "toolkit_version"),
            created=_text(data.get("created", ""), "created"),
            descriptor=descriptor,
            files={_text(n, "files key"): FileEntry.from_json(n, e) for n, e in files.items()},
            model_config=_optional_object(data, "model_config"),
            checkpoint=_optional_object(data, "checkpoint"),
            parity=_optional_object(data, "parity"),
            tensorrt=_optional_object(data, "tensorrt"))


def check_format(data: Mapping[str, Any]) -> int:
    """The format version of a manifest object; `ManifestError` for another format or a
    version this runtime does not read."""
    if data.get("format") != FORMAT:
        raise ManifestError(f"not a {FORMAT} manifest (format {_short(data.get('format'))})")
    version = data.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ManifestError(f"bundle format version {_short(version)} is not supported (this "
                            f"runtime reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                            "re-export the model with this toolkit version")
    return version


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted up to ``limit`` + 1 (no recursion)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [v for item in level if isinstance(item, (dict, list))
                 for v in (item.values() if isinstance(item, dict) else item)]
    return depth


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object, not {type(value).__name__}")
    return value


def _optional_object(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    return None if value is None else _object(value, key)


def _int(value: Any, where: str, kind: str) -> int:
    low, high = LIMITS[kind]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ManifestError(f"{where} must be an integer in {low}..{high}, not {_short(value)}")
    return value


def _ints(value: Any, where: str, count: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ManifestError(f"{where} must be {count} integers, not {_short(value)}")
    return tuple(value)


def _floats(value: Any, where: str, count: int, positive: bool = False
            ) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > 0 or not positive) for v in value):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise ManifestError(f"{where} must be {count} {kind}, not {_short(value)}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 4 * MAX_NAME:
        raise ManifestError(f"{where} must be a short text, not {_short(value)}")
    return value


def _names(value: Any, where: str, empty_ok: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not (value or empty_ok) or len(value) > 256 or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_NAME for v in value):
        raise ManifestError(f"{where} must be a list of names, not {_short(value)}")
    return tuple(value)
