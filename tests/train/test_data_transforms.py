"""Training/eval image pipelines: BGR->RGB, bilinear resize, normalization against a plain numpy
reference, augmentation switches, and a clear error for unreadable files."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from tal_infer import images
from tal_infer.errors import DataError
from tal_infer.images import read_image
from tal_train.data.protocols import TrainRecord
from tal_train.data.records import ImageRecord
from tal_train.data.transforms import (Augment, EvalImages, TrainImages, augment_image, read_rgb,
                                       to_tensor)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = (32, 16)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (50, 20, 3), dtype=np.uint8)
    path = tmp_path / "0001_c1s1_000001_01.png"  # lossless, so the reference sees the same pixels
    cv2.imwrite(str(path), bgr)
    return str(path), bgr


def _reference(bgr: np.ndarray) -> np.ndarray:
    """Plain reference: swap channels, cv2 bilinear resize, /255, (x - mean) / std, CHW."""
    rgb = bgr[:, :, ::-1].copy()
    resized = cv2.resize(rgb, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
    x = resized.astype(np.float64) / 255.0
    return ((x - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def test_eval_images_match_reference(image_file):
    path, bgr = image_file
    ds = EvalImages([ImageRecord(path, 1, 0, "d")], SIZE, MEAN, STD)
    x, index = ds[0]
    assert index == 0 and x.dtype == torch.float32 and tuple(x.shape) == (3, *SIZE)
    np.testing.assert_allclose(x.numpy(), _reference(bgr), rtol=0, atol=1e-5)


def test_to_tensor_matches_reference_on_random_inputs():
    rng = np.random.default_rng(1)
    for _ in range(3):
        img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
        mean, std = rng.uniform(0.2, 0.6, 3), rng.uniform(0.1, 0.4, 3)
        ref = ((img / 255.0 - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(to_tensor(img, mean, std).numpy(), ref, rtol=0, atol=1e-5)


def test_train_images_without_augment_equal_eval(image_file):
    path, _ = image_file
    rec = TrainRecord(path, label=4, camid=2, domain=1)
    x, label, camid, domain = TrainImages([rec], SIZE, MEAN, STD, augment=None)[0]
    assert (label, camid, domain) == (4, 2, 1)
    torch.testing.assert_close(x, EvalImages([rec], SIZE, MEAN, STD)[0][0])


def test_augment_switches(image_file):
    path, _ = image_file
    img = read_rgb(path, SIZE)
    off = Augment(flip=False, pad=0, color_jitter=0.0)
    assert np.array_equal(augment_image(img, off), img)
    flipped = [augment_image(img, Augment(flip=True, pad=0, color_jitter=0.0)) for _ in range(20)]
    assert all(np.array_equal(f, img) or np.array_equal(f, img[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, img[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, img) for f in flipped)
    crops = [augment_image(img, Augment(flip=False, pad=4, color_jitter=0.0)) for _ in range(10)]
    assert all(c.shape == img.shape for c in crops)
    assert any(not np.array_equal(c, img) for c in crops)
    # a pad-and-crop is a shifted copy: some window of the zero-padded image
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    for c in crops:
        assert any(np.array_equal(padded[t:t + SIZE[0], s:s + SIZE[1]], c)
                   for t in range(9) for s in range(9))
    jittered = augment_image(img, Augment(flip=False, pad=0, color_jitter=0.4))
    assert jittered.shape == img.shape and jittered.dtype == np.uint8


def test_augment_reproducible_with_torch_seed(image_file):
    path, _ = image_file
    ds = TrainImages([TrainRecord(path, 0, 0, 0)], SIZE, MEAN, STD)
    torch.manual_seed(3)
    a = ds[0][0]
    torch.manual_seed(3)
    torch.testing.assert_close(ds[0][0], a, rtol=0, atol=0)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DataError) as info:
        EvalImages([ImageRecord(str(bad), 1, 0, "d")], SIZE, MEAN, STD)[0]
    assert str(info.value) == f"{bad}: empty file (0 bytes)"


def _ordinary_8_bit_files(folder):
    """(path, file) of the 8-bit kinds detector crops come in: colour and gray JPEG, colour,
    gray and BGRA PNG, BMP, TIFF, lossy and lossless WebP."""
    rng = np.random.default_rng(5)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (50, 22, 3), dtype=np.uint8), (3, 3), 0)
    alpha = rng.integers(0, 256, (50, 22, 1), dtype=np.uint8)
    cases = [("c.jpg", colour, []), ("g.jpg", colour[..., 1], []), ("c.png", colour, []),
             ("g.png", colour[..., 0], []), ("a.png", np.concatenate([colour, alpha], 2), []),
             ("c.bmp", colour, []), ("c.tif", colour, []),
             ("c.webp", colour, [cv2.IMWRITE_WEBP_QUALITY, 80]),
             ("l.webp", colour, [cv2.IMWRITE_WEBP_QUALITY, 101])]
    for name, image, params in cases:
        cv2.imwrite(str(folder / name), image, params)
    return [str(folder / name) for name, _, _ in cases]


def test_training_tensors_are_unchanged_by_the_runtime_decoder(tmp_path):
    """Training reads through tal_infer.images.read_image now; for ordinary 8-bit files the
    tensors equal, bit for bit, those of the former cv2.imread(IMREAD_COLOR) path."""
    paths = _ordinary_8_bit_files(tmp_path)
    for path in paths:
        former = cv2.imread(path, cv2.IMREAD_COLOR)
        resized = cv2.resize(cv2.cvtColor(former, cv2.COLOR_BGR2RGB), (SIZE[1], SIZE[0]),
                             interpolation=cv2.INTER_LINEAR)
        x, _ = EvalImages([ImageRecord(path, 1, 0, "d")], SIZE, MEAN, STD)[0]
        torch.testing.assert_close(x, to_tensor(resized, MEAN, STD), rtol=0, atol=0,
                                   msg=path)


def test_training_sees_the_runtime_pixels_and_pixel_limit(tmp_path):
    """One decoder: a 16-bit file gives training the runtime's 8-bit pixels, and a file above
    the runtime's pixel limit is refused by training too, with the runtime's message."""
    deep = np.random.default_rng(6).integers(0, 65536, (50, 22, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    want = cv2.resize(cv2.cvtColor(read_image(tmp_path / "deep.png"), cv2.COLOR_BGR2RGB),
                      (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "deep.png"), SIZE), want)

    bomb = tmp_path / "0001_c1s1_000001_01.png"
    png = bytearray(cv2.imencode(".png", np.zeros((16, 16), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 30000, 30000)  # IHDR: width, height, then its checksum
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    bomb.write_bytes(bytes(png))
    with pytest.raises(DataError) as info:
        TrainImages([TrainRecord(str(bomb), 1, 0, 0)], SIZE, MEAN, STD)[0]
    assert str(info.value) == (f"{bomb}: image too large (30000x30000 = 900,000,000 pixels; "
                               f"the limit is {images.DEFAULT_MAX_PIXELS:,}, see --max-pixels)")
