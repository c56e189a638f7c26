"""Image reading and crop normalization: every bad case built on disk, conversions checked;
special files, codec messages on stderr and OpenCV's own pixel limit (a real bomb, decoded in a
child whose memory is measured)."""
from __future__ import annotations

import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer.cli import main as tal_infer_main
from tal_infer.errors import DataError
from tal_infer.images import (MAX_IMAGE_BYTES, MIN_SIDE, ImageError, list_images, read_image,
                              resize_batch, to_bgr_uint8)

from special_files import SPECIAL_KINDS, deadline, run_measured, special_file


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def crop(rng, h=48, w=24, channels=3, dtype=np.uint8):
    high = np.iinfo(dtype).max + 1
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(0, high, shape).astype(dtype)


def test_reads_color_png_exactly(tmp_path, rng):
    image = crop(rng)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 24, 3)
    np.testing.assert_array_equal(out, image)


def test_grayscale_bgra_and_16_bit_files(tmp_path, rng):
    gray, bgra, deep = crop(rng, channels=None), crop(rng, channels=4), crop(rng, dtype=np.uint16)
    for name, image in [("g.png", gray), ("a.png", bgra), ("d.png", deep)]:
        cv2.imwrite(str(tmp_path / name), image)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), bgra[..., :3])
    want = np.round(deep.astype(np.float64) / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), want)


def test_jpeg_and_non_ascii_path(tmp_path, rng):
    image = cv2.GaussianBlur(crop(rng, 64, 32), (5, 5), 0)
    path = tmp_path / "personne_é.jpg"
    cv2.imencode(".jpg", image)[1].tofile(path)
    out = read_image(path)
    assert out.shape == (64, 32, 3) and np.abs(out.astype(int) - image).mean() < 8


def _bad_files(tmp_path, rng):
    encoded = cv2.imencode(".png", crop(rng))[1].tobytes()
    jpeg = cv2.imencode(".jpg", crop(rng, 64, 32))[1].tobytes()
    cases = {
        "empty.jpg": (b"", "empty file"),
        "truncated.png": (encoded[: len(encoded) // 2], "not a readable image"),
        "truncated.jpg": (jpeg[: len(jpeg) * 3 // 4], "not a readable image"),
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)),
                        "not a readable image"),
        "notes.txt": (b"camera 3 notes\n" * 20, "not a readable image"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    return {name: problem for name, (_, problem) in cases.items()}


def test_bad_files_give_one_line_naming_the_file(tmp_path, rng):
    for name, problem in _bad_files(tmp_path, rng).items():
        with pytest.raises(ImageError, match=problem) as info:
            read_image(tmp_path / name)
        message = str(info.value)
        assert isinstance(info.value, DataError)
        assert message.startswith(str(tmp_path / name)) and "\n" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "gone.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path / "dir.jpg")


def test_tiny_crop_file_refused(tmp_path, rng):
    cv2.imwrite(str(tmp_path / "tiny.png"), crop(rng, 40, MIN_SIDE - 1))
    with pytest.raises(ImageError, match=r"too small \(7x40"):
        read_image(tmp_path / "tiny.png")
    cv2.imwrite(str(tmp_path / "ok.png"), crop(rng, MIN_SIDE, MIN_SIDE))
    assert read_image(tmp_path / "ok.png").shape == (MIN_SIDE, MIN_SIDE, 3)


def test_arrays_from_api_users(rng):
    bgr = crop(rng)
    assert to_bgr_uint8(bgr) is bgr
    gray = crop(rng, channels=None)
    np.testing.assert_array_equal(to_bgr_uint8(gray[..., None]), np.repeat(gray[..., None], 3, 2))
    deep = crop(rng, channels=4, dtype=np.uint16)
    want = np.round(deep[..., :3].astype(np.float64) / 257).astype(np.uint8)
    np.testing.assert_array_equal(to_bgr_uint8(deep), want)
    assert to_bgr_uint8(np.full((9, 9), 65535, np.uint16)).max() == 255


@pytest.mark.parametrize("array,problem", [
    (np.zeros((20, 20, 2), np.uint8), "unsupported image shape"),
    (np.zeros((2, 20, 20, 3), np.uint8), "unsupported image shape"),
    (np.zeros((20, 20, 3), np.float32), "unsupported pixel type float32"),
    (np.zeros((20, 20, 3), np.int16), "unsupported pixel type int16"),
    (np.zeros((20, 5, 3), np.uint8), "too small"),
    ([[1, 2], [3, 4]], "expected a numpy array"),
])
def test_bad_arrays(array, problem):
    with pytest.raises(ImageError, match=problem) as info:
        to_bgr_uint8(array, name="camera 2 crop 17")
    assert str(info.value).startswith("camera 2 crop 17: ")


def test_resize_batch_matches_plain_cv2(rng):
    crops = [crop(rng, 50, 20), crop(rng, 32, 16, channels=None), crop(rng, 32, 16)]
    out = resize_batch(crops, 32, 16)
    assert out.shape == (3, 32, 16, 3) and out.dtype == np.uint8
    want0 = cv2.resize(crops[0], (16, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[0], want0)
    np.testing.assert_array_equal(out[1], np.repeat(crops[1][..., None], 3, 2))
    np.testing.assert_array_equal(out[2], crops[2])
    with pytest.raises(ImageError, match="crop 1: image too small"):
        resize_batch([crops[0], crop(rng, 4, 4)], 32, 16)


def test_list_images(tmp_path):
    for rel in ["b/2.PNG", "a.jpg", "b/c/3.jpeg", "notes.txt", ".hidden.jpg", ".cache/x.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert list_images(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b/2.PNG",
                                     tmp_path / "b/c/3.jpeg"]
    assert list_images(tmp_path, recursive=False) == [tmp_path / "a.jpg"]


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        list_images(tmp_path / "file.jpg")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path / "empty")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_files_named_like_images_are_refused_at_once(tmp_path, kind):
    with special_file(kind, tmp_path / "x.jpg") as path, deadline(5):
        with pytest.raises(ImageError) as info:
            read_image(path)
    assert str(info.value) == f"{path}: is {SPECIAL_KINDS[kind]}; only regular files are read"


def test_an_oversized_image_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing on disk
    with deadline(5), pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: is {MAX_IMAGE_BYTES + 1:,} bytes, over the "
                               f"{MAX_IMAGE_BYTES:,}-byte limit for this kind of file")


def _cli(bundle, folders, *extra):
    queries, gallery = folders
    args = ["--gallery", gallery, "--queries", queries, "--model", bundle, "--quiet",
            "--device", "cpu", *extra]
    return CliRunner().invoke(tal_infer_main, [str(a) for a in args])


@pytest.mark.parametrize("index", [False, True], ids=["files", "index"])
def test_fifo_and_dev_zero_in_a_gallery(fake_bundle, crop_folders, tmp_path, index):
    """tal-infer with a FIFO and a link to /dev/zero among the gallery crops: --on-error fail
    names one in one error line, skip leaves both out; with and without --index, no hang."""
    gallery = crop_folders[1]
    fifo, zero = gallery / "0005_c3s1_000501_00.jpg", gallery / "0005_c3s1_000502_00.jpg"
    with special_file("fifo", fifo), special_file("dev-zero", zero):
        extra = ["--index", tmp_path / "idx"] if index else []
        with deadline(60):
            failed = _cli(fake_bundle, crop_folders, *extra)
            skipped = _cli(fake_bundle, crop_folders, *extra, "--on-error", "skip",
                           "--scores", tmp_path / "s.npz")
    assert failed.exit_code == 2 and "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{fifo}:" in errors[0], failed.stderr
    assert "is a named pipe (FIFO); only regular files are read" in errors[0]
    assert skipped.exit_code == 0, skipped.stderr
    assert "skipped 2 unreadable file(s)" in skipped.stderr
    assert "is a device; only regular files are read" in skipped.stderr
    gallery_used = set(np.load(tmp_path / "s.npz")["gallery"])
    assert len(gallery_used) == 12 and not {str(fifo), str(zero)} & gallery_used


def test_dev_zero_in_a_gallery_costs_no_memory(fake_bundle, crop_folders, tmp_path):
    """The run with --index in a child: with a link to /dev/zero among the crops its peak
    memory stays within 50 MiB of the same run without it."""
    queries, gallery = crop_folders
    code = f"""
import sys
from tal_infer.cli import main
sys.argv = ["tal-infer", "--gallery", {str(gallery)!r}, "--queries", {str(queries)!r},
            "--model", {str(fake_bundle)!r}, "--quiet", "--device", "cpu", "--on-error", "skip",
            "--backend", "onnxruntime", "--matcher", "numpy", "--index", sys.argv[1]]
try:
    main()
except SystemExit as stop:
    print("exit", stop.code)
"""
    clean = run_measured(code.replace("sys.argv[1]", repr(str(tmp_path / "clean"))), timeout=120)
    (gallery / "0005_c3s1_000502_00.jpg").symlink_to("/dev/zero")
    child = run_measured(code.replace("sys.argv[1]", repr(str(tmp_path / "idx"))), timeout=120)
    assert "exit 0" in clean.stdout and "exit 0" in child.stdout, child.stderr
    assert "skipped 1 unreadable file(s)" in child.stderr, child.stderr
    assert child.peak_rss_mib < clean.peak_rss_mib + 50, (child.peak_rss_mib, clean.peak_rss_mib)


def _damaged_jpeg() -> bytes:
    """A JPEG with junk inside its scan data: libjpeg decodes it to garbage, with a warning."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 32, 3)).astype(np.uint8), (5, 5), 0)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    return data[:-10] + b"\x00\x01\x02" + data[-10:]


def test_damaged_jpeg_data_is_refused_and_libjpeg_prints_nothing(tmp_path, capfd):
    path = tmp_path / "damaged.jpg"
    path.write_bytes(_damaged_jpeg())
    capfd.readouterr()
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: damaged image data (the decoder says: Corrupt JPEG "
                               "data: 7 extraneous bytes before marker 0xd9)")
    assert capfd.readouterr() == ("", "")


def _png_with_damaged_comment(image: np.ndarray) -> bytes:
    data = cv2.imencode(".png", image)[1].tobytes()
    body = b"tEXtComment\x00camera 3"
    bad_crc = struct.pack(">I", (zlib.crc32(body) + 1) & 0xFFFFFFFF)
    return data[:33] + struct.pack(">I", len(body) - 4) + body + bad_crc + data[33:]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


def test_other_decoder_messages_become_one_warning_naming_the_file(tmp_path, capfd,
                                                                   monkeypatch):
    """libpng's warning about a damaged comment: the pixels are intact, so the image is used,
    and the message is logged with the file's name instead of printed bare. (The logger is
    read directly: a CLI run earlier in the process may have stopped its propagation.)"""
    image = np.random.default_rng(1).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    path = tmp_path / "commented.png"
    path.write_bytes(_png_with_damaged_comment(image))
    records, logger = _Records(), logging.getLogger("tal_infer.images")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [records])
    capfd.readouterr()
    np.testing.assert_array_equal(read_image(path), image)
    assert capfd.readouterr() == ("", "")
    assert records.messages == [
        f"WARNING: {path}: decoder warning: libpng warning: tEXt: CRC error"]


def png_bomb(side: int) -> bytes:
    """A valid side x side 8-bit gray PNG of zeros (side a multiple of 100): ~400 KB for
    20000, decoding to 400 MB. One compressed block of 100 rows is repeated (a full flush
    makes each copy independent), with the zlib checksum of the whole image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    block = bytes((side + 1) * 100)  # each row: filter byte 0, then zeros
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // 100):
        adler = zlib.adler32(block, adler)
    stream = (b"\x78\xda" + first + again * (side // 100 - 1) + deflate.flush()
              + struct.pack(">I", adler))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))


def test_png_bomb_is_what_it_claims():
    """The bomb below is a real image: every row inflates, and the checksum holds."""
    data = png_bomb(1000)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (1000, 1000)


_FOOLED = """
import sys
import tal_infer.cli  # the whole tal-infer import chain
assert "cv2" not in sys.modules, "OpenCV was loaded before the limit could be set"
from tal_infer import images
{setup}
images.declared_size = lambda data: (16, 16)  # a header reader fooled, as by a crafted file
try:
    images.read_image({bomb!r}, 100_000)
except images.ImageError as err:
    print(err)
"""


@pytest.mark.parametrize("setup", ["assert images.set_decoder_pixel_limit(100_000)", ""],
                         ids=["set-before-reading", "set-by-the-first-read"])
def test_opencv_refuses_a_bomb_the_header_check_missed(tmp_path, setup):
    """The backstop: OpenCV's own limit, set from the pixel limit before OpenCV loads (by
    set_decoder_pixel_limit, or by the first read_image), refuses a real 20000x20000 bomb
    before allocating its 400 MB (806 MB peak RSS unguarded)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20000))
    child = run_measured(_FOOLED.format(setup=setup, bomb=str(bomb)), timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == (f"{bomb}: image too large (its decoder found more pixels "
                                    "than OpenCV's limit, OPENCV_IO_MAX_IMAGE_PIXELS; see "
                                    "--max-pixels)")
    assert child.stderr == ""
    assert child.peak_rss_mib < 150, child.peak_rss_mib


def test_opencv_reads_its_limit_only_when_it_loads(tmp_path):
    """Why the limit must be set before OpenCV loads: set afterwards it does nothing, and
    set_decoder_pixel_limit says so."""
    path = tmp_path / "big.png"
    path.write_bytes(png_bomb(1000))
    child = run_measured(f"""
import os, cv2, numpy as np
from tal_infer import images
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = "1000"
print(cv2.imdecode(np.fromfile({str(path)!r}, np.uint8), cv2.IMREAD_UNCHANGED).shape)
print(images.set_decoder_pixel_limit(1000))
""", timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["(1000,", "1000)", "False"]


def test_the_decoder_limit_is_kept_per_process():
    child = run_measured("""
from tal_infer import images
print(images.set_decoder_pixel_limit(5000), images.set_decoder_pixel_limit(5000),
      images.set_decoder_pixel_limit(None))
""", timeout=60)
    assert child.stdout.split() == ["True", "True", "False"], child.stderr
