"""Reading and normalizing person crops for the extractor (bundle contract, docs/bundle.md).

The extractor takes uint8 BGR ``[N, H, W, 3]`` at the manifest's size; everything users hand
us is brought to that form here, one way for files and arrays alike:

- grayscale (HxW, HxWx1) -> BGR by replication; BGRA -> BGR by dropping alpha (what
  ``cv2.imread`` does by default, so crops cut from RGBA files look as OpenCV users expect);
- 16-bit -> 8-bit by ``round(x / 257)``, which maps 0..65535 onto 0..255 and inverts the
  usual 8 -> 16-bit widening (``x * 257``) exactly;
- crops with a side below ``MIN_SIDE`` pixels are refused: upscaled to 384x128 they carry no
  identity and only pollute rank lists;
- files are decoded from their bytes (``cv2.imdecode``, any path encoding) with
  ``IMREAD_UNCHANGED``, so depth and alpha are seen before conversion; EXIF orientation is
  therefore not applied (detector crops carry none);
- decompression bombs: the size the header declares (`image_headers`: JPEG, PNG, BMP, TIFF,
  WebP; other content is refused) is checked against ``max_pixels`` before decoding, by
  default `DEFAULT_MAX_PIXELS` (8192 x 8192, 64 Mpx: above any crop or 8K frame, and at most
  0.5 GB decoded even as 16-bit BGRA).

Every problem is an `ImageError` (a `DataError`) whose one-line message names the file.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from .errors import DataError
from .image_headers import HeaderError, declared_size

MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 8192 * 8192
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageError(DataError):
    """An image (file or array) that cannot be used, with the file or crop it came from."""

    def __init__(self, source: str | os.PathLike, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = str(source), problem


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """Read an image file as BGR uint8 HxWx3 (conversions and checks as in the module doc).

    Images whose header declares more than ``max_pixels`` pixels are refused undecoded
    (``None``: no limit).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image file") from None
    except OSError as err:
        raise ImageError(path, f"cannot be read ({err.strerror or err})") from None
    return decode_image(data, path, max_pixels)


def decode_image(data: bytes, source: str | os.PathLike,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (the bytes of a file, or of a request) as BGR uint8 HxWx3 with
    the checks of `read_image`; ``source`` names it in the `ImageError` (never its bytes)."""
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    _check_declared_size(source, data, max_pixels)
    with _quiet_opencv():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(source, "not a readable image (corrupt, truncated or not an image "
                                 "file)")
    return to_bgr_uint8(image, name=str(source))


def _check_declared_size(source: str | os.PathLike, data: bytes,
                         max_pixels: int | None) -> None:
    try:
        width, height = declared_size(data)
    except HeaderError as err:
        raise ImageError(source, f"not a readable image ({err})") from None
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(source, f"image too large ({width}x{height} = {width * height:,} "
                               f"pixels; the limit is {max_pixels:,}, see --max-pixels)")


def to_bgr_uint8(array: np.ndarray, name: str = "crop") -> np.ndarray:
    """A crop as OpenCV gives it (HxW, HxWx1/3/4; uint8/uint16) as BGR uint8 HxWx3.

    Returns the input itself when it already is BGR uint8 (no copy).
    """
    if not isinstance(array, np.ndarray):
        raise ImageError(name, f"expected a numpy array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(name, f"unsupported image shape {array.shape} (expected HxW, HxWx1, "
                               "HxWx3 BGR or HxWx4 BGRA)")
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageError(name, f"unsupported pixel type {array.dtype} (expected uint8 or "
                               "uint16)")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(name, f"image too small ({width}x{height} pixels; the minimum is "
                               f"{MIN_SIDE} on each side)")
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array


def list_images(folder: str | os.PathLike, recursive: bool = True,
                empty_ok: bool = False) -> list[Path]:
    """Image files (`IMAGE_EXTENSIONS`, any case) under a folder, sorted; hidden entries
    skipped. The one listing rule of the toolkit: the runtime, the export's parity images and
    the training loaders (``recursive=False``) all list folders through it.

    Raises `DataError` for a missing folder, a file given as folder, or (unless ``empty_ok``)
    no images at all.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = sorted(p for p in _walk(folder, recursive) if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found and not empty_ok:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{folder}: no images found ({kinds})"
                        + ("" if recursive else " at its top level"))
    return found


def resize_batch(images: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Crops (any size, any accepted format) -> uint8 ``[N, height, width, 3]`` BGR, bilinear."""
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        image = to_bgr_uint8(image, name=f"crop {i}")
        if image.shape[:2] == (height, width):
            out[i] = image
        else:
            cv2.resize(image, (width, height), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        yield from (Path(root) / f for f in files if not f.startswith("."))


_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_level = 0


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines ("PNG input buffer is incomplete") while decoding: the
    caller reports the problem in one line. Reference-counted so concurrent decodes nest."""
    global _quiet_depth, _saved_level
    with _quiet_lock:
        if _quiet_depth == 0:
            _saved_level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                cv2.utils.logging.setLogLevel(_saved_level)
