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
- only regular files are read (`user_files`: a FIFO named ``x.jpg`` is refused, not waited
  on), of at most `MAX_IMAGE_BYTES`;
- decompression bombs, twice: the size the header declares (`image_headers`: JPEG, PNG, BMP,
  TIFF, WebP, read as strictly as the decoder reads them; other content is refused) is checked
  against ``max_pixels`` before decoding, by default `DEFAULT_MAX_PIXELS` (8192 x 8192, 64 Mpx:
  above any crop or 8K frame, and at most 0.5 GB decoded even as 16-bit BGRA); behind it,
  OpenCV's own limit (`set_decoder_pixel_limit`) refuses whatever the header check missed
  before the pixels are allocated;
- what the codec libraries print on stderr while decoding (libjpeg's "Corrupt JPEG data",
  libpng's warnings) is captured, never passed through: damaged JPEG data refuses the file
  (it would decode to garbage), other messages become one logged warning naming the file.

OpenCV is imported on first use, not with this module: it reads its pixel limit once, when it
loads, and the CLIs know theirs only after parsing ``--max-pixels``.

Every problem is an `ImageError` (a `DataError`) whose one-line message names the file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from .errors import DataError
from .image_headers import HeaderError, declared_size
from .user_files import UserFileError, read_regular

MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 8192 * 8192
# Compressed crops are KB and an 8K JPEG frame tens of MB; only uncompressed 16-bit files near
# the pixel limit are larger. The whole file is read before decoding, so this bounds that read.
MAX_IMAGE_BYTES = 256 << 20
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# libjpeg's warnings about the entropy-coded data: the decoder filled in or skipped pixels
DAMAGED_DATA_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")
OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"

log = logging.getLogger(__name__)


class ImageError(DataError):
    """An image (file or array) that cannot be used, with the file or crop it came from."""

    def __init__(self, source: str | os.PathLike, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = str(source), problem


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """Read an image file as BGR uint8 HxWx3 (conversions and checks as in the module doc).

    Images whose header declares more than ``max_pixels`` pixels are refused undecoded
    (``None``: no limit of ours; OpenCV's, see `set_decoder_pixel_limit`, still applies).
    """
    path = Path(path)
    try:
        data = read_regular(path, MAX_IMAGE_BYTES)
    except UserFileError as err:
        raise ImageError(path, err.problem) from None
    return decode_image(data, path, max_pixels)


def decode_image(data: bytes, source: str | os.PathLike,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (the bytes of a file, or of a request) as BGR uint8 HxWx3 with
    the checks of `read_image`; ``source`` names it in the `ImageError` (never its bytes)."""
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    _check_declared_size(source, data, max_pixels)
    cv2 = _opencv(max_pixels)
    with _captured_stderr() as messages:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:  # its size limits (validateInputImageSize) or a codec failure
            if "CV_IO_MAX_IMAGE" in str(err):
                raise ImageError(source, "image too large (its decoder found more pixels than "
                                       f"OpenCV's limit, {OPENCV_PIXEL_LIMIT}; see "
                                       "--max-pixels)") from None
            image = None
    if image is None:
        raise ImageError(source, "not a readable image (corrupt, truncated or not an image file)")
    damage = next((m for m in messages if m.startswith(DAMAGED_DATA_WARNINGS)), None)
    if damage:
        raise ImageError(source, f"damaged image data (the decoder says: {damage})")
    for message in messages:
        log.warning("%s: decoder warning: %s", source, message)
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


_NOT_LOADED_HERE = object()
_loaded_limit: object = _NOT_LOADED_HERE  # the limit OpenCV was loaded with by this module


def set_decoder_pixel_limit(max_pixels: int | None) -> bool:
    """Load OpenCV with its own pixel limit set to ``max_pixels`` (None: OpenCV's built-in
    2^30); returns whether OpenCV enforces that limit.

    The header check can be fooled by a file the decoder reads differently; OpenCV's limit is
    checked on the size its decoder read, before the pixels are allocated. OpenCV reads
    ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, in a static initializer that runs when the library
    loads (``import cv2``; setting it later has no effect, tried with opencv-python-headless
    4.8.0 and 5.1.0), so the first load in the process fixes it: call this before anything reads
    an image (the CLIs: from ``--max-pixels``). Otherwise the first `read_image` sets it from
    its own ``max_pixels``, and code that imports cv2 itself after this module was imported
    gets `DEFAULT_MAX_PIXELS`. Returns False when OpenCV was already loaded with another limit
    or by other code (its limit then stays as it was).
    """
    global _loaded_limit
    if "cv2" in sys.modules:
        return _loaded_limit is not _NOT_LOADED_HERE and _loaded_limit == max_pixels
    if max_pixels is None:
        os.environ.pop(OPENCV_PIXEL_LIMIT, None)
    else:
        os.environ[OPENCV_PIXEL_LIMIT] = str(max_pixels)
    import cv2  # noqa: F401  (the library reads the variable now)

    _loaded_limit = max_pixels
    return True


def _opencv(max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ModuleType:
    """The cv2 module, loaded with ``max_pixels`` as its pixel limit if this is the first load."""
    if "cv2" not in sys.modules:
        set_decoder_pixel_limit(max_pixels)
    import cv2

    return cv2


# For code that loads OpenCV itself after importing this module (training's augmentation)
os.environ.setdefault(OPENCV_PIXEL_LIMIT, str(DEFAULT_MAX_PIXELS))


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
    cv2 = _opencv()
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
    cv2 = _opencv()
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


_capture_lock = threading.Lock()
_capture_files: dict[int, BinaryIO] = {}  # process id -> its capture file


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Run the body with file descriptor 2 sent to a private file, then yield its lines.

    libjpeg and libpng print their warnings with ``fprintf(stderr)``, below any logging
    setting (OpenCV's log level does not reach them), so the descriptor itself is swapped.
    One body at a time in the process (a lock): concurrent decodes wait, and output that
    another thread writes to stderr meanwhile is taken for the decoder's. The file is made per
    process, as DataLoader workers fork with it open.
    """
    lines: list[str] = []
    with _capture_lock:
        if os.getpid() not in _capture_files:
            _capture_files[os.getpid()] = tempfile.TemporaryFile(buffering=0)
        sink = _capture_files[os.getpid()].fileno()
        os.ftruncate(sink, 0)
        os.lseek(sink, 0, os.SEEK_SET)
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink, 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.lseek(sink, 0, os.SEEK_SET)
            text = os.read(sink, 1 << 16).decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
