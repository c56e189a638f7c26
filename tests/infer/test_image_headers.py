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


def tiff(gray: np.ndarray, order: str, big: bool, extra_tags=()) -> bytes:
    """An uncompressed 8-bit gray TIFF or BigTIFF in either byte order (one strip);
    ``extra_tags`` ((tag, type, value), ...) come after the usual ones."""
    height, width = gray.shape
    count_fmt, entry_fmt, value_size = ("Q", "HHQ", 8) if big else ("H", "HHI", 4)
    header = (b"II" if order == "<" else b"MM") + (
        struct.pack(order + "HHHQ", 43, 8, 0, 16) if big else struct.pack(order + "HI", 42, 8))
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, width * height), *extra_tags]
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

    monkeypatch.setattr(cv2, "imdecode", never)
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


def jpeg_with_fake_frame_header(real: bytes, fake=(32, 64)) -> bytes:
    """The bypass of issue-style crafted files: ``FF 00`` after SOI, then two bytes a lenient
    reader takes for a segment length that lands it inside a comment holding a fake frame
    header; libjpeg drops the ``FF 00`` and the two bytes as junk, skips the comment and reads
    the real frame header."""
    width, height = fake
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    payload = b"xx" + sof
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(payload)) + payload
    return real[:2] + b"\xff\x00" + struct.pack(">H", 8) + comment + real[2:]


def _segment(data: bytes, marker: int) -> int:
    return next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] == marker)


def _jpeg(height=40, width=24) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width), 128, np.uint8))[1].tobytes()


def _with_second_frame_header(data: bytes) -> bytes:
    sof = _segment(data, 0xC0)
    length = struct.unpack(">H", data[sof + 2:sof + 4])[0]
    return data[:sof] + data[sof:sof + 2 + length] * 2 + data[sof + 2 + length:]


def _with_frame_length(data: bytes, length: int) -> bytes:
    sof = _segment(data, 0xC0)
    return data[:sof + 2] + struct.pack(">H", length) + data[sof + 4:]


AMBIGUOUS = {  # name -> (file, what the decoder reads, the refusal)
    "jpeg-fake-frame-in-comment": (jpeg_with_fake_frame_header(_jpeg(1000, 1000)),
                                   (1000, 1000), "JPEG with marker 0x00 before its first scan"),
    "jpeg-stray-bytes": (_jpeg()[:20] + b"\x00\x12" + _jpeg()[20:], (24, 40),
                         "JPEG with stray bytes between its segments"),
    "jpeg-two-frame-headers": (_with_second_frame_header(_jpeg()), None,
                               "JPEG with two frame headers"),
    "jpeg-frame-header-length": (_with_frame_length(_jpeg(), 20), None,
                                 "JPEG frame header of inconsistent length"),
    "jpeg-unknown-marker": (_jpeg()[:2] + b"\xff\xf0\x00\x04ab" + _jpeg()[2:], None,
                            "JPEG with marker 0xF0 before its first scan"),
    "jpeg-zero-length": (_jpeg()[:2] + b"\xff\xe1\x00\x00" + _jpeg()[2:], None,
                         "JPEG segment of length < 2"),
    "tiff-two-widths": (tiff(np.zeros((30, 1000), np.uint8), "<", big=False,
                             extra_tags=[(256, 4, 20)]), (1000, 30),
                        "TIFF with tag 256 twice in its first directory"),
    "tiff-width-count-2": (tiff(np.zeros((30, 20), np.uint8), "<", big=False).replace(
        struct.pack("<HHI", 256, 4, 1), struct.pack("<HHI", 256, 4, 2)), None,
        "TIFF size tag 256 of type 4, count 2"),
    "png-zero-width": (png_header(0, 40), None, "declares an empty image (0x40)"),
    "bmp-16-byte-header": (b"BM" + bytes(12) + struct.pack("<IHH", 16, 40, 20) + bytes(40),
                           None, "BMP with a 16-byte header"),
}


@pytest.mark.parametrize("name", AMBIGUOUS)
def test_headers_the_decoder_may_read_otherwise_are_refused(tmp_path, monkeypatch, name):
    """What the header reader cannot read one way only is refused, undecoded; where OpenCV
    decodes such a file, it reads another size than a lenient reader would (the bypass)."""
    data, decoder_reads, problem = AMBIGUOUS[name]
    if decoder_reads is not None:
        assert decoded_size(data) == decoder_reads
    with pytest.raises(HeaderError) as info:
        declared_size(data)
    assert str(info.value) == problem
    path = tmp_path / "crafted.jpg"
    path.write_bytes(data)

    def never(*args):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(cv2, "imdecode", never)
    with pytest.raises(ImageError) as info:
        read_image(path, max_pixels=100_000)
    assert str(info.value) == f"{path}: not a readable image ({problem})"


def _mutated(rng: np.random.Generator, data: bytes, region: int) -> bytes:
    """1-3 random edits in the first ``region`` bytes: overwrite, insert, delete, or copy a
    stretch of the file elsewhere (duplicate segments or tags)."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        pos, op = int(rng.integers(2, region)), int(rng.integers(0, 4))
        if op == 0:
            out[pos] = int(rng.integers(0, 256))
        elif op == 1:
            out[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
        elif op == 2:
            del out[pos:pos + int(rng.integers(1, 4))]
        else:
            start = int(rng.integers(2, region))
            out[pos:pos] = out[start:start + int(rng.integers(2, 24))]
    return bytes(out)


@pytest.mark.parametrize("ext, params, region", [
    (".jpg", [], 700), (".bmp", [], 64), (".tif", [], 200),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], 64),
])
def test_damaged_headers_are_read_as_the_decoder_reads_them_or_refused(ext, params, region):
    """Seeded random edits of the header region: whenever the reader gives a size and OpenCV
    decodes the file, the two agree (the edits that make OpenCV read another size are the
    bypasses above)."""
    rng = np.random.default_rng(7)
    base = cv2.imencode(ext, rng.integers(0, 256, (60, 30, 3), dtype=np.uint8), params)[1]
    decoded = 0
    for _ in range(400):
        data = _mutated(rng, base.tobytes(), region)
        try:
            width, height = declared_size(data)
        except HeaderError:
            continue
        if width * height > 4_000_000:  # the pixel limit's case, not worth decoding here
            continue
        with images._captured_stderr():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is not None:
            assert (image.shape[1], image.shape[0]) == (width, height), data[:region].hex()
            decoded += 1
    assert decoded >= 1
