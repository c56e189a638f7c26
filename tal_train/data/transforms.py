"""Training and evaluation image pipelines (paper Sec. 4.1: "random flipping, cropping, color
jittering").

Images are read by the runtime's decoder (`tal_infer.images.read_image`: the same pixels,
conversions and pixel limit as at inference: regular files only, header and decoder pixel
limits, gray/BGRA/16-bit converted its way, no EXIF rotation), converted BGR -> RGB, resized
bilinearly to (H, W) (the same cv2.INTER_LINEAR resize the runtime applies before its graph),
augmented (training only) and normalized with the model's mean/std into a float tensor
[3, H, W]. Random draws use torch's
generator, so `torch.manual_seed` and DataLoader worker seeding make them reproducible.

Augmentation sets (``--augment``, `AUGMENTATIONS`):

* ``standard``: flip, zero-pad 10 and random crop back, brightness/contrast/saturation factors
  in [0.8, 1.2] (the first implementation; the demo and tests train with it);
* ``qaconv``: the official QAConv-GS code's training transform (ShengcaiLiao/QAConv
  ``main_gs.py``, v2.0): pad 10 + random crop, flip, rotation in [-5, 5] degrees, colour jitter
  with brightness/contrast/saturation factors in [0.5, 2] and a hue shift in [-0.1, 0.1] of the
  hue circle, then ``RandomOcclusion(0, 0.8)``: a white square, side uniform in
  [1, 0.8 min(H, W)), at a uniform position, on every image. Differences: OpenCV instead of PIL
  (bilinear resize where the official code resizes bicubically, nearest-neighbour rotation as
  torchvision's default), and the jitter steps run in a fixed order (brightness, contrast,
  saturation, hue) where torchvision shuffles them;
* ``none``.

Steps that are switched off draw no random numbers, so ``standard`` draws exactly what the first
implementation drew (runs stay reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from tal_infer.images import read_image

from .protocols import TrainRecord
from .records import ImageRecord

OCCLUSION_COLOR = (255, 255, 255)  # QAConv's RandomOcclusion pastes a white block


@dataclass(frozen=True)
class Augment:
    flip: bool = True          # random horizontal flip, p = 0.5
    pad: int = 10              # zero-pad this many pixels, then random-crop back (0 = off)
    # brightness/contrast/saturation factors: s -> uniform in [1-s, 1+s]; (lo, hi) as given
    color_jitter: float | tuple[float, float] = 0.2
    hue: float = 0.0           # hue shift uniform in [-hue, hue] of the hue circle (0 = off)
    rotation: float = 0.0      # rotation uniform in [-rotation, rotation] degrees (0 = off)
    occlusion: float = 0.0     # white square, side < occlusion * min(H, W) (0 = off)


AUGMENTATIONS: dict[str, Augment | None] = {
    "standard": Augment(),
    "qaconv": Augment(color_jitter=(0.5, 2.0), hue=0.1, rotation=5.0, occlusion=0.8),
    "none": None,
}


def read_rgb(path: str, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB [H, W, 3] of the image at `path`, resized bilinearly to `size` = (H, W);
    `ImageError` (a `DataError`) naming the file when it cannot be used."""
    rgb = cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi)."""
    return int(torch.randint(lo, hi, ()).item())


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(np.ascontiguousarray(img), matrix, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _color(img: np.ndarray, aug: Augment) -> np.ndarray:
    s = aug.color_jitter
    lo, hi = (1 - s, 1 + s) if isinstance(s, (int, float)) else s
    x = img.astype(np.float32) * _uniform(lo, hi)                               # brightness
    x = (x - x.mean()) * _uniform(lo, hi) + x.mean()                             # contrast
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * _uniform(lo, hi) + gray[..., None]               # saturation
    img = np.clip(x, 0, 255).astype(np.uint8)
    if aug.hue > 0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # uint8 hue in [0, 180)
        shift = round(_uniform(-aug.hue, aug.hue) * 180)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img


def _occlude(img: np.ndarray, max_size: float) -> np.ndarray:
    h, w = img.shape[:2]
    side = _randint(1, max(2, int(min(h, w) * max_size)))
    x0, y0 = _randint(0, w - side), _randint(0, h - side)
    img = img.copy()
    img[y0:y0 + side, x0:x0 + side] = OCCLUSION_COLOR
    return img


def augment_image(img: np.ndarray, aug: Augment) -> np.ndarray:
    """Random flip, pad-and-crop, rotation, colour jitter and occlusion of a uint8 RGB image
    (same shape out), each as `aug` switches it."""
    if aug.flip and torch.rand(()).item() < 0.5:
        img = img[:, ::-1]
    if aug.pad > 0:
        h, w = img.shape[:2]
        padded = cv2.copyMakeBorder(np.ascontiguousarray(img), aug.pad, aug.pad, aug.pad,
                                    aug.pad, cv2.BORDER_CONSTANT, value=0)
        top, left = (_randint(0, 2 * aug.pad + 1) for _ in range(2))
        img = padded[top:top + h, left:left + w]
    if aug.rotation > 0:
        img = _rotate(img, _uniform(-aug.rotation, aug.rotation))
    if aug.color_jitter:
        img = _color(img, aug)
    if aug.occlusion > 0:
        img = _occlude(img, aug.occlusion)
    return np.ascontiguousarray(img)


def to_tensor(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalized float32 [3, H, W]; mean/std on the 0..1 scale."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class TrainImages(torch.utils.data.Dataset):
    """Training samples ``(image [3, H, W], label, camid, domain)`` from `TrainRecord`s."""

    def __init__(self, records: Sequence[TrainRecord], image_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], augment: Augment | None = Augment()):
        self.records, self.size, self.mean, self.std = list(records), image_size, mean, std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        r = self.records[index]
        img = read_rgb(r.path, self.size)
        if self.augment is not None:
            img = augment_image(img, self.augment)
        return to_tensor(img, self.mean, self.std), r.label, r.camid, r.domain


class EvalImages(torch.utils.data.Dataset):
    """Evaluation samples ``(image [3, H, W], index)``; labels stay with the caller's records."""

    def __init__(self, records: Sequence[ImageRecord | TrainRecord], image_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float]):
        self.records, self.size, self.mean, self.std = list(records), image_size, mean, std

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(read_rgb(self.records[index].path, self.size), self.mean, self.std), index
