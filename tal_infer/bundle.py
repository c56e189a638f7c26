"""Reading an export bundle (docs/bundle.md, format version 1) without the training code.

`load_bundle` checks the manifest (format, version, the sections the runtime needs, their types
and ranges) and turns it into a `Bundle`: input size and preprocessing, the feature outputs
with their match-layout shapes, the precision (`tal_infer.precision`, read here once), the
global descriptor (version 2; docs/scale.md) and the matching section. Version 1 bundles (no
descriptor) still load; only two-stage retrieval needs the descriptor. File hashes are verified
on request
only (hashing a large extractor on every start would cost seconds); `find_latest_bundle` picks
the default model for the CLI. `Bundle.fingerprint` ties a gallery index to the features a
bundle produces.

A bundle is untrusted data (docs/bundle.md): every file the runtime opens goes through
`Bundle.file`, which refuses a name that is absolute, climbs with ``..`` or resolves (through a
symlink) outside the bundle folder, so no size or hash of an outside file is ever read; the
manifest's ``files`` keys are checked the same way when the bundle is opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import BundleError
from .features import DESCRIPTOR, feature_name, split_feature_name
from .hashing import file_sha256
from .precision import FLOAT32, Precision, precision_of_manifest

FORMAT = "tal-reid-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 2 added the global descriptor output
MANIFEST = "manifest.json"
EXTRACTOR = "extractor.onnx"


@dataclass(frozen=True)
class FeatureSpec:
    """One extractor output: ``ds_<scale>`` [N, K, C, h, w] or ``di_<scale>`` [N, C, h, w]."""
    name: str
    shape: tuple[int, ...]  # without N
    hw: tuple[int, int]

    @property
    def stream(self) -> str:
        return split_feature_name(self.name)[0]

    @property
    def scale(self) -> str:
        return split_feature_name(self.name)[1]

    @property
    def match_shape(self) -> tuple[int, ...]:
        """Per-item shape in match layout: DS (K, HW, C), DI (HW, C)."""
        hw = self.hw[0] * self.hw[1]
        return (self.shape[0], hw, self.shape[1]) if len(self.shape) == 4 else (hw, self.shape[0])


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder; arrays are read lazily. ``descriptor_dim`` is the length of
    the global descriptor (0: the bundle has none)."""
    path: Path
    manifest: dict[str, Any]
    height: int
    width: int
    features: dict[str, FeatureSpec] = field(default_factory=dict)
    precision: Precision = FLOAT32
    descriptor_dim: int = 0

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every extractor output without N, in graph order: the feature maps, then the
        descriptor when there is one. Per-item shapes as the runtime passes them on (match
        layout for the maps)."""
        shapes = {name: spec.match_shape for name, spec in self.features.items()}
        if self.descriptor_dim:
            shapes[DESCRIPTOR] = (self.descriptor_dim,)
        return shapes

    @property
    def name(self) -> str:
        return str(self.manifest.get("run_name") or self.path.name)

    @property
    def matching(self) -> dict[str, Any]:
        return self.manifest["matching"]

    def file(self, name: str) -> Path:
        """The path of a bundle file; BundleError if it would lie outside the bundle folder."""
        return _inside(self.path, name)

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    @cached_property
    def heads(self) -> dict[str, np.ndarray]:
        """heads.npz as float32 arrays (no pickle)."""
        path = self.file("heads.npz")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        except FileNotFoundError:
            raise BundleError(f"{path}: missing (the bundle has no matching heads)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise BundleError(f"{path}: not a readable npz file, damaged or truncated "
                              f"({str(err)[:200]})") from None

    def check_outputs(self, shapes: Mapping[str, Sequence[int | None]], source: Path) -> None:
        """Refuse an extractor whose outputs (name -> shape with the batch dimension; None for
        a dynamic size) are not the manifest's ``features``, so a disagreement is found when
        the bundle is opened rather than deep inside matching."""
        wanted = {**self.features, **({DESCRIPTOR: None} if self.descriptor_dim else {})}
        if set(shapes) != set(wanted):
            raise BundleError(f"{source}: outputs {sorted(shapes)} differ from the manifest "
                              f"features {sorted(wanted)}")
        if self.descriptor_dim and tuple(shapes[DESCRIPTOR])[1:] not in (
                (self.descriptor_dim,), (None,)):
            raise BundleError(f"{self.path / MANIFEST}: descriptor has {self.descriptor_dim} "
                              f"values, but {source.name} gives shape {list(shapes[DESCRIPTOR])}; "
                              "the bundle is inconsistent")
        for name, spec in self.features.items():
            got = tuple(shapes[name])[1:]
            if len(got) != len(spec.shape) or any(
                    g is not None and g != want for g, want in zip(got, spec.shape)):
                shown = ", ".join("?" if g is None else str(g) for g in got)
                raise BundleError(f"{self.path / MANIFEST}: feature {name} has shape "
                                  f"{[-1, *spec.shape]}, but {source.name} gives "
                                  f"[N, {shown}]; the bundle is inconsistent")

    @cached_property
    def fingerprint(self) -> str:
        """Changes whenever the features would: the extractor's bytes and the input/feature
        sections of the manifest (a gallery index is valid only for an equal fingerprint)."""
        digest = hashlib.sha256()
        digest.update(_file_sha256(self.file(EXTRACTOR)).encode())
        keys = ("input", "features", "dtype", "streams", "scales", "domains")
        keys += ("descriptor",) if "descriptor" in self.manifest else ()  # v1 prints unchanged
        digest.update(json.dumps({k: self.manifest.get(k) for k in keys}, sort_keys=True).encode())
        return f"{self.name}:{digest.hexdigest()[:16]}"

    def verify(self) -> None:
        """Check every file listed in the manifest against its size and SHA-256."""
        for name, entry in sorted(self.manifest.get("files", {}).items()):
            path = self.file(name)
            if not path.is_file():
                raise BundleError(f"{path}: listed in the manifest but missing")
            if "bytes" in entry and path.stat().st_size != entry["bytes"]:
                raise BundleError(f"{path}: size {path.stat().st_size} bytes differs from the "
                                  f"manifest ({entry['bytes']}); the bundle is damaged")
            if "sha256" in entry and _file_sha256(path) != entry["sha256"]:
                raise BundleError(f"{path}: SHA-256 differs from the manifest; the bundle is "
                                  "damaged or was modified")


def load_bundle(path: str | os.PathLike, verify: bool = False) -> Bundle:
    """Open a bundle folder (or its manifest.json); `BundleError` naming the problem."""
    path = Path(path)
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    manifest_path = _inside(path, MANIFEST)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not an export bundle (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a {FORMAT} manifest (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{manifest_path}: bundle format version "
                          f"{manifest.get('format_version')!r} is not supported (this runtime "
                          f"reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-export "
                          "the model with this toolkit version")
    try:
        bundle = _parse(path, manifest)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise BundleError(f"{manifest_path}: malformed manifest ({type(err).__name__}: "
                          f"{err})") from None
    if not bundle.has(EXTRACTOR):
        raise BundleError(f"{bundle.file(EXTRACTOR)}: missing from the bundle")
    if verify:
        bundle.verify()
    return bundle


def find_latest_bundle(root: str | os.PathLike = "export") -> Path:
    """The most recently written bundle under ``root`` (itself, or a folder below it)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    found = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime) if root.is_dir() \
        else []
    if not found:
        raise BundleError(f"no model bundle found under {root.resolve()}/ (export one with "
                          "'tal-export CKPT' or pass --model BUNDLE_DIR)")
    return found[-1].parent


def _parse(path: Path, manifest: dict[str, Any]) -> Bundle:
    """The manifest's sections as a Bundle; ValueError/KeyError/TypeError name the field."""
    spec = _section(manifest, "input")
    if spec.get("layout", "NHWC") != "NHWC" or spec.get("color", "BGR") != "BGR" or \
            spec.get("dtype", "uint8") != "uint8":
        raise ValueError(f"input must be uint8 NHWC BGR, the manifest says {spec}")
    height, width = (_positive(spec[k], f"input.{k}") for k in ("height", "width"))
    features = {}
    for name, entry in _section(manifest, "features").items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ValueError(f"features.{name} needs a shape list")
        shape = tuple(_positive(d, f"features.{name}.shape") for d in entry["shape"][1:])
        stream = split_feature_name(name)[0] if "_" in name else None
        if (stream, len(shape)) not in (("ds", 4), ("di", 3)):
            raise ValueError(f"feature {name!r} has shape {entry['shape']}")
        hw = tuple(entry.get("hw", shape[-2:]))
        if hw != shape[-2:]:
            raise ValueError(f"features.{name}.hw {list(hw)} is not the shape's h, w "
                             f"{list(shape[-2:])}")
        features[name] = FeatureSpec(name, shape, hw)
    matching = _section(manifest, "matching")
    for stream in matching["score"]:
        if stream not in matching["streams"]:
            raise KeyError(f"matching.streams lacks {stream!r}")
        for scale in matching["scales"]:
            if feature_name(stream, scale) not in features:
                raise KeyError(f"features lack {feature_name(stream, scale)}")
    _check_file_names(path, manifest)
    return Bundle(path, manifest, height, width, features, precision_of_manifest(manifest),
                  _descriptor_dim(manifest))


def _descriptor_dim(manifest: dict[str, Any]) -> int:
    """Length of the global descriptor (section ``descriptor``, format version 2), 0 without."""
    if "descriptor" not in manifest:
        return 0
    if manifest["format_version"] < 2:
        raise ValueError("a descriptor section needs format version 2")
    shape = _section(manifest, "descriptor")["shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise ValueError(f"descriptor.shape must be [-1, D], not {shape!r}")
    return _positive(shape[1], "descriptor.shape")


def _section(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key!r} must be an object, not {type(value).__name__}")
    return value


def _positive(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer, not {value!r}")
    return value


def _check_file_names(path: Path, manifest: dict[str, Any]) -> None:
    """Every file name the manifest gives (``files`` keys, ``tensorrt.*.file``) must stay inside
    the bundle, and ``files`` entries must be {sha256: hex, bytes: int}."""
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise TypeError(f"'files' must map file names to {{sha256, bytes}}, not a "
                        f"{type(files).__name__}")
    for name, entry in files.items():
        _inside(path, name, key=f"files key {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256", ""), str) or \
                not _non_negative_int(entry.get("bytes", 0)):
            raise TypeError(f"files[{name!r}] must be {{sha256: hex string, bytes: integer}}")
    engines = manifest.get("tensorrt") or {}
    for part, entry in (engines.items() if isinstance(engines, dict) else ()):
        if isinstance(entry, dict) and "file" in entry:
            _inside(path, entry["file"], key=f"tensorrt.{part}.file {entry['file']!r}")


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inside(root: Path, name: Any, key: str | None = None) -> Path:
    """``root / name`` when it stays inside ``root`` (no absolute name, no ``..``, no symlink
    leading out); otherwise BundleError naming ``key`` (a manifest field) or the path."""
    if not isinstance(name, str) or not name or "\0" in name:
        reason = "is not a file name"
    elif os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        reason = "is an absolute path"
    elif ".." in re.split(r"[/\\]", name):
        reason = "climbs out with '..'"
    else:
        path = root / name
        resolved, base = path.resolve(), root.resolve()
        if resolved == base or base not in resolved.parents:
            reason = "resolves outside the bundle folder (symlink?)"
        else:
            return path
    where = f"{root / MANIFEST}: {key}" if key else f"{root}: file {name!r}"
    raise BundleError(f"{where} {reason}; refusing the bundle")


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror or err})") from None
