"""Reading an export bundle (docs/bundle.md, format version 1) without the training code.

`load_bundle` checks the manifest (format, version, the sections the runtime needs) and turns
it into a `Bundle`: input size and preprocessing, the feature outputs with their match-layout
shapes, and the matching section. File hashes are verified on request only (hashing a large
extractor on every start would cost seconds); `find_latest_bundle` picks the default model
for the CLI. `Bundle.fingerprint` ties a gallery index to the features a bundle produces.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .hashing import file_sha256

FORMAT = "tal-reid-bundle"
FORMAT_VERSION = 1
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
        return self.name.split("_", 1)[0]

    @property
    def scale(self) -> str:
        return self.name.split("_", 1)[1]

    @property
    def match_shape(self) -> tuple[int, ...]:
        """Per-item shape in match layout: DS (K, HW, C), DI (HW, C)."""
        hw = self.hw[0] * self.hw[1]
        return (self.shape[0], hw, self.shape[1]) if len(self.shape) == 4 else (hw, self.shape[0])


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder; arrays are read lazily."""
    path: Path
    manifest: dict[str, Any]
    height: int
    width: int
    features: dict[str, FeatureSpec] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.manifest.get("run_name") or self.path.name)

    @property
    def dtype(self) -> str:
        return str(self.manifest.get("dtype", "float32"))

    @property
    def matching(self) -> dict[str, Any]:
        return self.manifest["matching"]

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @cached_property
    def heads(self) -> dict[str, np.ndarray]:
        """heads.npz as float32 arrays (no pickle)."""
        path = self.file("heads.npz")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        except FileNotFoundError:
            raise BundleError(f"{path}: missing (the bundle has no matching heads)") from None
        except (OSError, ValueError) as err:
            raise BundleError(f"{path}: not a readable npz file ({err})") from None

    @cached_property
    def fingerprint(self) -> str:
        """Changes whenever the features would: the extractor's bytes and the input/feature
        sections of the manifest (a gallery index is valid only for an equal fingerprint)."""
        digest = hashlib.sha256()
        digest.update(_file_sha256(self.file(EXTRACTOR)).encode())
        keys = ("input", "features", "dtype", "streams", "scales", "domains")
        digest.update(json.dumps({k: self.manifest.get(k) for k in keys}, sort_keys=True).encode())
        return f"{self.name}:{digest.hexdigest()[:16]}"

    def verify(self) -> None:
        """Check every file listed in the manifest against its size and SHA-256."""
        for name, entry in sorted(self.manifest.get("files", {}).items()):
            path = self.file(name)
            if not path.is_file():
                raise BundleError(f"{path}: listed in the manifest but missing")
            if "bytes" in entry and path.stat().st_size != int(entry["bytes"]):
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
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not an export bundle (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a {FORMAT} manifest (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format version "
                          f"{manifest.get('format_version')!r} is not supported (this runtime "
                          f"reads version {FORMAT_VERSION}); re-export the model with this "
                          "toolkit version")
    try:
        bundle = _parse(path, manifest)
    except (KeyError, TypeError, ValueError, IndexError) as err:
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
    spec = manifest["input"]
    if spec.get("layout", "NHWC") != "NHWC" or spec.get("color", "BGR") != "BGR" or \
            spec.get("dtype", "uint8") != "uint8":
        raise ValueError(f"input must be uint8 NHWC BGR, the manifest says {spec}")
    features = {}
    for name, entry in manifest["features"].items():
        shape = tuple(int(d) for d in entry["shape"][1:])
        hw = tuple(int(d) for d in entry.get("hw", shape[-2:]))
        if name.startswith("ds_") and len(shape) != 4 or name.startswith("di_") and \
                len(shape) != 3 or not name.startswith(("ds_", "di_")):
            raise ValueError(f"feature {name!r} has shape {entry['shape']}")
        features[name] = FeatureSpec(name, shape, hw)
    matching = manifest["matching"]
    for stream in matching["score"]:
        if stream not in matching["streams"]:
            raise KeyError(f"matching.streams lacks {stream!r}")
        for scale in matching["scales"]:
            if f"{stream}_{scale}" not in features:
                raise KeyError(f"features lack {stream}_{scale}")
    return Bundle(path, manifest, int(spec["height"]), int(spec["width"]), features)


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror or err})") from None
