"""Image size from the file header, before decoding (the decompression-bomb guard of `images`).

A 30000x30000 PNG of one colour is under 1 MB and decodes to 2.7 GB; OpenCV has no header-only
API and its default limit (2^30 pixels) is far too high for person crops. So the size is read
here from the header of each accepted format: PNG (IHDR), JPEG (the frame header before the
first scan), BMP (the DIB header), TIFF and BigTIFF (ImageWidth / ImageLength of the first
directory, the page OpenCV decodes) and WebP (VP8 / VP8L / VP8X). These are the formats of
`images.IMAGE_EXTENSIONS`, recognized by the signatures OpenCV uses to pick its decoder; other
content (GIF, PNM, ...) is not accepted, whatever its name.

A size is only worth checking if it is the one the decoder will use, so the reader is as
strict as the decoder and stricter where the decoder tolerates: whatever it cannot read one way
only is refused. JPEG: no stray bytes between segments (libjpeg skips them with a warning, so
``FF 00`` junk could hide a fake frame header inside a comment from a lenient reader), only
markers libjpeg accepts before the first scan, exactly one frame header of consistent length;
TIFF: each tag at most once (libtiff keeps the first of two ImageWidth tags), sizes of count 1;
every format: no zero size. `images` backs this with OpenCV's own limit.
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
                width, height = reader(data)
            except (struct.error, IndexError):
                raise HeaderError("truncated header") from None
            if width < 1 or height < 1:
                raise HeaderError(f"declares an empty image ({width}x{height})")
            return width, height
    raise HeaderError("not a JPEG, PNG, BMP, TIFF or WebP file")


def _png(data: bytes) -> tuple[int, int]:
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise HeaderError("PNG without a 13-byte IHDR chunk first")
    return struct.unpack(">II", data[16:24])


# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM
# what libjpeg reads before the first scan (jdmarker.c): frame headers, DHT, DAC, DQT, DNL, DRI,
# APPn, COM and the markers without a length; any other marker there is an error for it
_BEFORE_SCAN = _SOF | _NO_LENGTH | {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE} | set(range(0xE0, 0xF0))


def _jpeg(data: bytes) -> tuple[int, int]:
    """The frame header's size, reading the segments up to the first scan as libjpeg does
    but refusing what it only tolerates (see the module doc)."""
    pos, size = 2, None
    while True:
        if data[pos] != 0xFF:
            raise HeaderError("JPEG with stray bytes between its segments")
        while data[pos] == 0xFF:  # fill bytes, which libjpeg skips silently
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0xDA:  # start of scan: the header is complete
            if size is None:
                raise HeaderError("JPEG without a frame header")
            return size
        if marker not in _BEFORE_SCAN:
            raise HeaderError(f"JPEG with marker 0x{marker:02X} before its first scan")
        if marker in _NO_LENGTH:
            continue
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if marker in _SOF:
            if size is not None:
                raise HeaderError("JPEG with two frame headers")
            height, width, components = struct.unpack(">HHB", data[pos + 3:pos + 8])
            if length != 8 + 3 * components:
                raise HeaderError("JPEG frame header of inconsistent length")
            size = (width, height)
        elif length < 2:
            raise HeaderError("JPEG segment of length < 2")
        pos += length


def _bmp(data: bytes) -> tuple[int, int]:
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        return struct.unpack("<HH", data[18:22])
    if dib_size < 36:  # the sizes OpenCV's decoder reads (it fails on the others)
        raise HeaderError(f"BMP with a {dib_size}-byte header")
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # negative height = rows stored top-down


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
    sizes, seen = {}, set()
    for i in range(count):
        start = ifd + count_size + i * entry_size
        tag, kind, n, value = struct.unpack(order + entry_format, data[start:start + entry_size])
        if tag in seen:  # libtiff keeps one of the two, and which is its own affair
            raise HeaderError(f"TIFF with tag {tag} twice in its first directory")
        seen.add(tag)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8, left-justified
            fmt = {3: "H", 4: "I", 16: "Q" if version == 43 else None}.get(kind)
            if fmt is None or n != 1:
                raise HeaderError(f"TIFF size tag {tag} of type {kind}, count {n}")
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
