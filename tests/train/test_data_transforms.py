"""Training/eval image pipelines: BGR->RGB, bilinear resize, normalization against a plain numpy
reference, augmentation switches, and a clear error for unreadable files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tal_infer.errors import DataError
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
    with pytest.raises(DataError, match=r"0001_c1s1_000001_01\.jpg: cannot read image"):
        EvalImages([ImageRecord(str(bad), 1, 0, "d")], SIZE, MEAN, STD)[0]
