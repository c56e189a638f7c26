"""The official QAConv-GS augmentation (``--augment qaconv``): occlusion, rotation, hue and the
wide colour jitter each checked on images whose correct output is known, and the ``standard``
set drawing exactly what it drew before the new steps existed."""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from tal_train.data.transforms import AUGMENTATIONS, Augment, augment_image

OFF = dict(flip=False, pad=0, color_jitter=0.0)
H, W = 48, 24


def _draws(aug: Augment, img: np.ndarray, n: int = 40) -> list[np.ndarray]:
    torch.manual_seed(0)
    return [augment_image(img, aug) for _ in range(n)]


def test_occlusion_is_one_white_square_inside_the_image():
    img = np.full((H, W, 3), 40, np.uint8)
    sides = set()
    for out in _draws(Augment(**OFF, occlusion=0.8), img):
        changed = (out != img).any(-1)
        ys, xs = np.nonzero(changed)
        assert len(ys) > 0 and (out[changed] == 255).all()
        side = ys.max() - ys.min() + 1
        assert side == xs.max() - xs.min() + 1 and changed.sum() == side * side  # a full square
        assert 1 <= side < 0.8 * min(H, W)
        sides.add(int(side))
    assert len(sides) > 5


def test_rotation_stays_within_five_degrees_around_the_centre():
    img = np.zeros((H, W, 3), np.uint8)
    img[4:7, 11:14] = 255  # a dot straight above the centre
    angles = []
    for out in _draws(Augment(**OFF, rotation=5.0), img):
        ys, xs = np.nonzero(out[..., 0] > 0)
        assert len(ys) > 0
        dy, dx = H / 2 - ys.mean() - 0.5, xs.mean() + 0.5 - W / 2
        angles.append(math.degrees(math.atan2(dx, dy)))
    assert max(abs(a) for a in angles) <= 5.0 + 2.5  # + the dot's pixel quantization
    assert min(angles) < -1.5 and max(angles) > 1.5  # both directions drawn


def test_hue_shift_is_within_a_tenth_of_the_circle():
    img = np.zeros((H, W, 3), np.uint8)
    img[...] = (200, 40, 40)  # saturated red, hue 0
    shifts = []
    for out in _draws(Augment(flip=False, pad=0, color_jitter=(1.0, 1.0), hue=0.1), img):
        hue = int(cv2.cvtColor(out[:1, :1], cv2.COLOR_RGB2HSV)[0, 0, 0])
        shifts.append(hue if hue < 90 else hue - 180)  # signed, cv2 units (180 = full circle)
    assert max(abs(s) for s in shifts) <= 18 + 1
    assert min(shifts) < -5 and max(shifts) > 5


def test_wide_colour_jitter_scales_a_grey_image_by_half_to_double():
    img = np.full((H, W, 3), 100, np.uint8)  # contrast and saturation leave flat grey alone
    ratios = [float(out.mean()) / 100 for out in _draws(Augment(flip=False, pad=0,
                                                                color_jitter=(0.5, 2.0)), img)]
    assert all(0.49 <= r <= 2.01 for r in ratios)
    assert min(ratios) < 0.75 and max(ratios) > 1.5  # wider than the standard [0.8, 1.2]


def test_qaconv_set_switches_every_official_step_on():
    aug = AUGMENTATIONS["qaconv"]
    assert (aug.flip, aug.pad, aug.color_jitter, aug.hue, aug.rotation, aug.occlusion) == (
        True, 10, (0.5, 2.0), 0.1, 5.0, 0.8)
    img = np.random.default_rng(0).integers(0, 200, (H, W, 3), dtype=np.uint8)
    for out in _draws(aug, img, 10):
        assert out.shape == img.shape and (out == 255).all(-1).any()  # the occluder
    assert AUGMENTATIONS["none"] is None and AUGMENTATIONS["standard"] == Augment()
