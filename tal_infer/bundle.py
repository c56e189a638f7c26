"""Reading an export bundle (docs/bundle.md) without the training code.

`load_bundle` reads manifest.json (a regular file of at most `MANIFEST_MAX_BYTES`, nesting at
most `MAX_JSON_DEPTH` deep) into the shared typed description `tal_infer.bundle_schema.Manifest`,
which checks every value against its type and bounds, and returns a `Bundle`: input size,
feature outputs with their match-layout shapes, the precision, the global descriptor, the
matching section. File hashes are verified on request only (hashing a large extractor on every
start would cost seconds); `find_latest_bundle` picks the default model for the CLI.
`Bundle.fingerprint` ties a gallery index to the features a bundle produces.

A bundle is untrusted data (docs/bundle.md "Bundles are data, never code"):

- every file the runtime opens goes through `Bundle.file`, which refuses a name that is
  absolute, climbs with ``..`` or resolves (through a symlink) outside the bundle folder; the
  manifest's ``files`` keys and ``tensorrt.*.file`` are checked the same way when it opens;
- files are read only when they are regular files (no FIFO, no device) and within the size
  cap of their kind (`FILE_LIMITS`), through `tal_infer.user_files`;
- ONNX graphs are scanned before any runtime sees them: external data is refused
  (`tal_infer.onnx_scan`), whatever the ONNX Runtime version would allow;
- heads.npz is read entry by entry: only the arrays the manifest's matching section names,
  each checked for dtype and shape from its .npy header before its bytes are read (so a
  small file holding a deflated gigabyte is never inflated), and refused when not finite.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .bundle_schema import (EXTRACTOR, FEATURE_FILES, HEADS, MANIFEST, DescriptorSection,
                            FeatureSection, Manifest, ManifestError, MatchingSection, json_depth)
from .errors import BundleError
from .features import DESCRIPTOR, feature_names
from .hashing import file_sha256
from .heads import AFFINE, SCALE_ARRAYS, array_key
from .onnx_scan import OnnxScanError, check_no_external_data
from .precision import Precision
from .user_files import UserFileError, check_regular, open_regular, read_regular

MANIFEST_MAX_BYTES = 4 * 2 ** 20
MAX_JSON_DEPTH = 32
MAX_PROJECTION = 4097  # P of a head's projections (1 + attention hidden units)
FILE_LIMITS = {  # bytes a bundle file of each kind may have
    ".onnx": 2 ** 31,          # protobuf's own limit
    ".safetensors": 2 ** 33,
    ".plan": 2 ** 33,
    ".npz": 64 * 2 ** 20,      # heads.npz is a few MB even for the paper preset
}


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder; arrays are read lazily. ``raw`` is the manifest as parsed
    (the fingerprint hashes its sections as written)."""
    path: Path
    manifest: Manifest
    raw: Mapping[str, Any]

    @property
    def height(self) -> int:
        return self.manifest.input.height

    @property
    def width(self) -> int:
        return self.manifest.input.width

    @property
    def features(self) -> Mapping[str, FeatureSection]:
        return self.manifest.features

    @property
    def precision(self) -> Precision:
        return self.manifest.precision

    @property
    def matching(self) -> MatchingSection:
        return self.manifest.matching

    @property
    def descriptor(self) -> DescriptorSection | None:
        return self.manifest.descriptor

    @property
    def descriptor_dim(self) -> int:
        """Length of the global descriptor (0: the bundle has none)."""
        return 0 if self.descriptor is None else self.descriptor.dim

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
        return self.manifest.run_name or self.path.name

    def file(self, name: str) -> Path:
        """The path of a bundle file; BundleError if it would lie outside the bundle folder."""
        return _inside(self.path, name)

    def has(self, name: str) -> bool:
        path = self.file(name)
        return path.exists() and not path.is_dir()

    def read(self, name: str) -> bytes:
        """The bytes of a bundle file: a regular file within its kind's size cap."""
        path = self.file(name)
        try:
            return read_regular(path, FILE_LIMITS.get(path.suffix, MANIFEST_MAX_BYTES))
        except UserFileError as err:
            raise BundleError(f"{err}; refusing the bundle") from None

    def check_file(self, name: str) -> Path:
        """The path of a bundle file that another library opens itself (safetensors, a memory
        map): refused unless it is a regular file within its kind's size cap."""
        path = self.file(name)
        try:
            size = check_regular(path).st_size
        except UserFileError as err:
            raise BundleError(f"{err}; refusing the bundle") from None
        limit = FILE_LIMITS.get(path.suffix, MANIFEST_MAX_BYTES)
        if size > limit:
            raise BundleError(f"{path}: is {size:,} bytes, over the {limit:,}-byte limit for "
                              "this kind of file; refusing the bundle")
        return path

    def graph(self, name: str) -> bytes:
        """An ONNX graph file's bytes, refused when it refers to external data."""
        data = self.read(name)
        try:
            check_no_external_data(data)
        except OnnxScanError as err:
            raise BundleError(f"{self.file(name)}: {err}; refusing the bundle") from None
        return data

    @cached_property
    def heads(self) -> dict[str, np.ndarray]:
        """The heads.npz arrays the matching section uses, float32 (module doc)."""
        return _read_heads(self)

    def check_input(self, shape: Sequence[int | str | None], source: Path) -> None:
        """Refuse a graph whose image input is not ``[N, height, width, 3]`` of the manifest."""
        dims = [d if isinstance(d, int) else None for d in shape]
        if len(dims) != 4 or dims[1:] != [self.height, self.width, 3]:
            shown = ", ".join("N" if d is None else str(d) for d in dims)
            raise BundleError(f"{self.path / MANIFEST}: input is {self.height}x{self.width}, "
                              f"but {source.name} takes [{shown}]; the bundle is inconsistent")

    def check_outputs(self, shapes: Mapping[str, Sequence[int | None]], source: Path) -> None:
        """Refuse an extractor whose outputs (name -> shape with the batch dimension; None for
        a dynamic size) are not the manifest's ``features``, so a disagreement is found when
        the bundle is opened rather than deep inside matching."""
        wanted = self.manifest.output_names
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
        """Changes whenever the features would: the bytes of every file that computes them
        (`FEATURE_FILES` present) and the manifest sections that describe them (a gallery
        index is valid only for an equal fingerprint)."""
        digest = hashlib.sha256()
        digest.update(_file_sha256(self.file(EXTRACTOR)).encode())
        for name in FEATURE_FILES:
            if name != EXTRACTOR and self.has(name):
                digest.update(f"{name}:{_file_sha256(self.file(name))}".encode())
        keys = ("input", "features", "dtype", "streams", "scales", "domains")
        keys += tuple(k for k in ("descriptor", "model_config") if k in self.raw)
        digest.update(json.dumps({k: self.raw.get(k) for k in keys}, sort_keys=True).encode())
        return f"{self.name}:{digest.hexdigest()[:16]}"

    def verify(self) -> None:
        """Check every file listed in the manifest against its size and SHA-256."""
        for name, entry in sorted(self.manifest.files.items()):
            path = self.file(name)
            if not path.is_file():
                raise BundleError(f"{path}: listed in the manifest but missing")
            if entry.bytes and path.stat().st_size != entry.bytes:
                raise BundleError(f"{path}: size {path.stat().st_size} bytes differs from the "
                                  f"manifest ({entry.bytes}); the bundle is damaged")
            if entry.sha256 and _file_sha256(path) != entry.sha256:
                raise BundleError(f"{path}: SHA-256 differs from the manifest; the bundle is "
                                  "damaged or was modified")


def load_bundle(path: str | os.PathLike, verify: bool = False) -> Bundle:
    """Open a bundle folder (or its manifest.json); `BundleError` naming the problem."""
    path = Path(path)
    if path.name == MANIFEST and not path.is_dir():
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    manifest_path = _inside(path, MANIFEST)
    try:
        text = read_regular(manifest_path, MANIFEST_MAX_BYTES)
    except UserFileError as err:
        if err.problem == "file not found":
            raise BundleError(f"{path}: not an export bundle (no {MANIFEST})") from None
        raise BundleError(f"{err}; refusing the bundle") from None
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deep" if isinstance(err, RecursionError) else str(err)[:120]
        raise BundleError(f"{manifest_path}: not a readable manifest ({reason})") from None
    if json_depth(raw, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BundleError(f"{manifest_path}: nested more than {MAX_JSON_DEPTH} levels deep; "
                          "not a manifest this toolkit writes")
    try:
        manifest = Manifest.from_json(raw)
    except ManifestError as err:
        raise BundleError(f"{manifest_path}: {err}") from None
    _check_file_names(path, manifest)
    bundle = Bundle(path, manifest, raw)
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


def expected_heads(bundle: Bundle) -> dict[str, tuple[int, ...]]:
    """heads.npz key -> the shape the manifest implies, with -1 for the projection width P
    (and -2 for P - 1, the attention's hidden units), for every array matching uses."""
    wanted: dict[str, tuple[int, ...]] = {}
    matching = bundle.matching
    for stream in matching.score:
        mode = matching.modes[stream]
        wanted[array_key(stream, None, AFFINE)] = (2,)
        for scale, name in zip(matching.scales, feature_names([stream], matching.scales)):
            lead = bundle.features[name].match_shape[:-1]  # (K, HW) or (HW,)
            shapes = {"wq": (*lead, -1), "wg": (*lead, -1), "b1": (-2,),
                      "w2": (lead[0], -2), "b2": (lead[0],)}
            for part in SCALE_ARRAYS[mode]:
                wanted[array_key(stream, scale, part)] = shapes[part]
    return wanted


def _read_heads(bundle: Bundle) -> dict[str, np.ndarray]:
    path = bundle.file(HEADS)
    wanted = expected_heads(bundle)
    try:
        with open_regular(path, FILE_LIMITS[".npz"]) as f, zipfile.ZipFile(f) as archive:
            if len(archive.infolist()) > 4 * len(wanted) + 16:
                raise BundleError(f"{path}: {len(archive.infolist())} entries, far more than "
                                  f"the {len(wanted)} arrays the heads need")
            arrays = {key: _npz_entry(archive, key, shape, path)
                      for key, shape in wanted.items()}
    except UserFileError as err:
        if err.problem == "file not found":
            raise BundleError(f"{path}: missing (the bundle has no matching heads)") from None
        raise BundleError(f"{err}; refusing the bundle") from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise BundleError(f"{path}: not a readable npz file, damaged or truncated "
                          f"({str(err)[:200]})") from None
    _check_projection_widths(arrays, path)
    return arrays


def _npz_entry(archive: zipfile.ZipFile, key: str, shape: tuple[int, ...],
               path: Path) -> np.ndarray:
    """One .npy entry of an npz archive, its header checked before its data is read."""
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise BundleError(f"{path}: missing array {key!r}") from None
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise BundleError(f"{path}: array {key!r} has .npy version {version}")
        got, fortran, dtype = reader(f)
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or len(got) != len(shape) \
                or any(w >= 0 and g != w for g, w in zip(got, shape)) \
                or any(g < 1 or g > MAX_PROJECTION for g, w in zip(got, shape) if w < 0):
            want = "x".join("P" if w == -1 else "H" if w == -2 else str(w) for w in shape)
            raise BundleError(f"{path}: array {key!r} is {dtype} {list(got)}, the manifest "
                              f"needs float [{want}] (P <= {MAX_PROJECTION})")
        size = int(np.prod(got)) * dtype.itemsize
        data = f.read(size)
    if len(data) != size:
        raise BundleError(f"{path}: array {key!r} is truncated")
    array = np.frombuffer(data, dtype).reshape(got, order="F" if fortran else "C")
    if not np.isfinite(array).all():
        raise BundleError(f"{path}: array {key!r} holds NaN or infinite values; the bundle is "
                          "damaged")
    return array.astype(np.float32)


def _check_projection_widths(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """wq and wg of a scale share P; the attention's b1 / w2 have P - 1 hidden units."""
    for key, wq in arrays.items():
        if not key.endswith("/wq"):
            continue
        prefix = key[:-len("wq")]
        p = wq.shape[-1]
        if arrays[prefix + "wg"].shape[-1] != p:
            raise BundleError(f"{path}: {prefix}wq and {prefix}wg differ in width P")
        for part in ("b1", "w2"):
            if prefix + part in arrays and arrays[prefix + part].shape[-1] != p - 1:
                raise BundleError(f"{path}: {prefix}{part} needs {p - 1} hidden units (P - 1)")


def _check_file_names(path: Path, manifest: Manifest) -> None:
    """Every file name the manifest gives (``files`` keys, ``tensorrt.*.file``) must stay
    inside the bundle."""
    for name in manifest.files:
        _inside(path, name, key=f"files key {name!r}")
    for part, entry in (manifest.tensorrt or {}).items():
        if isinstance(entry, dict) and "file" in entry:
            _inside(path, entry["file"], key=f"tensorrt.{part}.file {entry['file']!r}")


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
        return file_sha256(path, FILE_LIMITS.get(path.suffix, 2 ** 33))
    except UserFileError as err:
        raise BundleError(f"{err}; refusing the bundle") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror or err})") from None
