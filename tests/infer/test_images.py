"""Image reading and crop normalization: every bad case built on disk, conversions checked."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tal_infer.errors import DataError
from tal_infer.images import (MIN_SIDE, ImageError, list_images, read_image, resize_batch,
                              to_bgr_uint8)


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
