"""Image size from the file header, before decoding (the decompression-bomb guard of `images`).

A 30000x30000 PNG of one colour is under 1 MB and decodes to 2.7 GB; OpenCV has no header-only
API and its own limit (2^30 pixels) is far too high for person crops. So the size is read here
from the header of each accepted format: PNG (IHDR), JPEG (the first SOF segment, which every
decoder reads), BMP (the DIB header), TIFF and BigTIFF (ImageWidth / ImageLength of the first
directory, the page OpenCV decodes) and WebP (VP8 / VP8L / VP8X). These are the formats of
`images.IMAGE_EXTENSIONS`; other content (GIF, PNM, ...) is not accepted, whatever its name.
"""
from __future__ import annotations

import struct


class HeaderError(ValueError):
    """Not one of the accepted formats, or a header too damaged to give a size."""


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) that the image in ``data`` declares; raises `HeaderError`."""
    for signature, reader in _READERS:
        if data.startswith(signature):
            try:
                return reader(data)
            except (struct.error, IndexError):
                raise HeaderError("truncated header") from None
    raise HeaderError("not a JPEG, PNG, BMP, TIFF or WebP file")


def _png(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk first")
    return struct.unpack(">II", data[16:24])


# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM


def _jpeg(data: bytes) -> tuple[int, int]:
    pos = 2
    while True:
        while data[pos] != 0xFF:  # tolerate junk between segments, as libjpeg does
            pos += 1
        while data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise HeaderError("JPEG without a frame header")
        if marker not in _NO_LENGTH:
            pos += struct.unpack(">H", data[pos:pos + 2])[0]


def _bmp(data: bytes) -> tuple[int, int]:
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # negative height = rows stored top-down


def _tiff(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 42:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        count_format, entry_format, entry_size = "H", "HHI4s", 12
    elif version == 43:  # BigTIFF
        (ifd,) = struct.unpack(order + "Q", data[8:16])
        count_format, entry_format, entry_size = "Q", "HHQ8s", 20
    else:
        raise HeaderError(f"unknown TIFF version {version}")
    count_size = struct.calcsize(count_format)
    (count,) = struct.unpack(order + count_format, data[ifd:ifd + count_size])
    sizes = {}
    for i in range(count):
        start = ifd + count_size + i * entry_size
        tag, kind, _, value = struct.unpack(order + entry_format, data[start:start + entry_size])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8, left-justified
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise HeaderError(f"TIFF size tag {tag} of type {kind}")
            sizes[tag] = struct.unpack(order + fmt, value[:struct.calcsize(fmt)])[0]
    if set(sizes) != {256, 257}:
        raise HeaderError("TIFF without image width and length")
    return sizes[256], sizes[257]


def _webp(data: bytes) -> tuple[int, int]:
    if data[8:12] != b"WEBP":
        raise HeaderError("a RIFF file that is not WebP")
    chunk, body = data[12:16], data[20:30]
    if len(body) < 10:
        raise IndexError
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if body[3:6] != b"\x9d\x01\x2a":
            raise HeaderError("WebP VP8 without a key frame")
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14 + 14 bits of size - 1
        if body[0] != 0x2F:
            raise HeaderError("WebP VP8L without its signature")
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags, 3 reserved bytes, 24-bit canvas size - 1
        return (int.from_bytes(body[4:7], "little") + 1,
                int.from_bytes(body[7:10], "little") + 1)
    raise HeaderError(f"unknown WebP chunk {chunk!r}")


_READERS = ((b"\x89PNG\r\n\x1a\n", _png), (b"\xff\xd8", _jpeg), (b"BM", _bmp),
            (b"II*\x00", _tiff), (b"MM\x00*", _tiff), (b"II+\x00", _tiff), (b"MM\x00+", _tiff),
            (b"RIFF", _webp))
