"""Decompression bombs: the size an image header declares is checked before decoding.

`declared_size` is checked against OpenCV's decoded size on fresh random images of every
accepted format and variant (the reference), then headers declaring 30000x30000 are refused
without the decoder ever running.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from tal_infer import images
from tal_infer.image_headers import HeaderError, declared_size
from tal_infer.images import DEFAULT_MAX_PIXELS, ImageError, read_image

BOMB = 30000


def random_image(rng, channels: int | None = 3, dtype=np.uint8) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(8, 90, 2))
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


ENCODED = [  # (extension, channels, dtype, OpenCV parameters)
    (".png", 3, np.uint8, []), (".png", None, np.uint8, []), (".png", 4, np.uint16, []),
    (".jpg", 3, np.uint8, []), (".jpg", None, np.uint8, []),
    (".jpg", 3, np.uint8, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    (".bmp", 3, np.uint8, []), (".bmp", None, np.uint8, []),
    (".tif", 3, np.uint8, []), (".tiff", 4, np.uint16, [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    (".webp", 3, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 80]),
    (".webp", 4, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 101]),
]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height (8-bit gray): one compressed row, then the end."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                  8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(bytes(width + 1), 9)) + png_chunk(b"IEND", b""))


def tiff(gray: np.ndarray, order: str, big: bool) -> bytes:
    """An uncompressed 8-bit gray TIFF or BigTIFF in either byte order (one strip)."""
    height, width = gray.shape
    count_fmt, entry_fmt, value_size = ("Q", "HHQ", 8) if big else ("H", "HHI", 4)
    header = (b"II" if order == "<" else b"MM") + (
        struct.pack(order + "HHHQ", 43, 8, 0, 16) if big else struct.pack(order + "HI", 42, 8))
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    entry_size = struct.calcsize(order + entry_fmt) + value_size
    data_at = (len(header) + struct.calcsize(order + count_fmt) + len(tags) * entry_size
               + value_size)
    ifd = struct.pack(order + count_fmt, len(tags))
    for tag, kind, value in tags:
        value = data_at if tag == 273 else value
        packed = struct.pack(order + ("H" if kind == 3 else "I"), value)
        ifd += struct.pack(order + entry_fmt, tag, kind, 1) + packed.ljust(value_size, b"\0")
    return header + ifd + bytes(value_size) + gray.tobytes()


def bmp(bgr: np.ndarray, core_header: bool) -> bytes:
    """A 24-bit BMP: OS/2 core header (bottom-up) or a Windows header with top-down rows."""
    height, width = bgr.shape[:2]
    stride = (3 * width + 3) // 4 * 4
    rows = b"".join(row.tobytes().ljust(stride, b"\0") for row in
                    (bgr[::-1] if core_header else bgr))
    dib = (struct.pack("<IHHHH", 12, width, height, 1, 24) if core_header else
           struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, len(rows), 0, 0, 0, 0))
    offset = 14 + len(dib)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + dib + rows


def webp_extended(image: np.ndarray) -> bytes:
    """A lossless WebP with a VP8X header in front (the extended format)."""
    simple = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    height, width = image.shape[:2]
    vp8x = (b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + simple[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def decoded_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "OpenCV cannot decode the reference image"
    return image.shape[1], image.shape[0]


@pytest.mark.parametrize("ext, channels, dtype, params", ENCODED)
def test_declared_size_equals_the_decoded_size(ext, channels, dtype, params):
    rng = np.random.default_rng(1)
    for _ in range(3):
        data = cv2.imencode(ext, random_image(rng, channels, dtype), params)[1].tobytes()
        assert declared_size(data) == decoded_size(data)


@pytest.mark.parametrize("build", [
    lambda img: tiff(img[..., 0], "<", big=False), lambda img: tiff(img[..., 0], ">", big=False),
    lambda img: tiff(img[..., 0], "<", big=True), lambda img: tiff(img[..., 0], ">", big=True),
    lambda img: bmp(img, core_header=True), lambda img: bmp(img, core_header=False),
    webp_extended,
], ids=["tiff-le", "tiff-be", "bigtiff-le", "bigtiff-be", "bmp-os2", "bmp-top-down",
        "webp-vp8x"])
def test_declared_size_of_format_variants_opencv_does_not_write(build):
    rng = np.random.default_rng(2)
    for _ in range(3):
        data = build(random_image(rng))
        assert declared_size(data) == decoded_size(data)


def _declaring(data: bytes, ext: str, width: int, height: int) -> bytes:
    """``data`` (an encoded image) with its header patched to declare width x height."""
    out = bytearray(data)
    if ext == ".jpg":
        sof = next(i for i in range(2, len(out) - 1) if out[i] == 0xFF and out[i + 1] == 0xC0)
        out[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    elif ext == ".bmp":
        out[18:26] = struct.pack("<ii", width, height)
    elif ext == ".webp":  # VP8L: 14 bits each
        out[21:25] = struct.pack("<I", (width - 1) | (height - 1) << 14)
    return bytes(out)


@pytest.mark.parametrize("name, data, size", [
    ("bomb.png", png_header(BOMB, BOMB), (BOMB, BOMB)),
    ("bomb.jpg", _declaring(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes(),
                            ".jpg", BOMB, BOMB), (BOMB, BOMB)),
    ("bomb.bmp", _declaring(cv2.imencode(".bmp", np.zeros((16, 16, 3), np.uint8))[1].tobytes(),
                            ".bmp", BOMB, BOMB), (BOMB, BOMB)),
    ("bomb.tif", tiff(np.zeros((16, 16), np.uint8), "<", big=False).replace(
        struct.pack("<HHII", 256, 4, 1, 16), struct.pack("<HHII", 256, 4, 1, BOMB)).replace(
        struct.pack("<HHII", 257, 4, 1, 16), struct.pack("<HHII", 257, 4, 1, BOMB)),
     (BOMB, BOMB)),
    ("bomb.webp", _declaring(cv2.imencode(".webp", np.zeros((16, 16, 3), np.uint8),
                                          [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
                             ".webp", 16000, 16000), (16000, 16000)),
    ("bomb-vp8x.webp", webp_extended(np.zeros((16, 16, 3), np.uint8)).replace(
        (15).to_bytes(3, "little") * 2, (BOMB - 1).to_bytes(3, "little") * 2), (BOMB, BOMB)),
])
def test_bombs_are_refused_before_decoding(tmp_path, monkeypatch, name, data, size):
    assert len(data) < 2000
    path = tmp_path / name
    path.write_bytes(data)
    assert declared_size(data) == size

    def never(*args):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(images.cv2, "imdecode", never)
    width, height = size
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: image too large ({width}x{height} = "
                               f"{width * height:,} pixels; the limit is "
                               f"{DEFAULT_MAX_PIXELS:,}, see --max-pixels)")


def test_the_limit_is_an_argument(tmp_path):
    path = tmp_path / "crop.png"
    cv2.imwrite(str(path), np.zeros((40, 20, 3), np.uint8))
    assert read_image(path, max_pixels=800).shape == (40, 20, 3)
    assert read_image(path, max_pixels=None).shape == (40, 20, 3)
    with pytest.raises(ImageError, match=r"image too large \(20x40 = 800 pixels; the limit "
                                         r"is 799"):
        read_image(path, max_pixels=799)


@pytest.mark.parametrize("data, problem", [
    (b"GIF89a" + bytes(40), "not a JPEG, PNG, BMP, TIFF or WebP file"),
    (b"P6\n20 40\n255\n" + bytes(2400), "not a JPEG, PNG, BMP, TIFF or WebP file"),
    (png_header(20, 40)[:20], "truncated header"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(9) + b"\xff\xda",
     "JPEG without a frame header"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "a RIFF file that is not WebP"),
])
def test_content_that_is_not_an_accepted_format(tmp_path, data, problem):
    with pytest.raises(HeaderError, match=problem):
        declared_size(data)
    path = tmp_path / "crop.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=f"not a readable image \\({problem}\\)"):
        read_image(path)
