"""Training and evaluation image pipelines (paper Sec. 4.1: "random flipping, cropping, color
jittering").

Images are read with OpenCV, converted BGR -> RGB, resized bilinearly to (H, W) (the same
cv2.INTER_LINEAR resize the runtime applies before its graph), augmented (training only) and
normalized with the model's mean/std into a float tensor [3, H, W]. Random draws use torch's
generator, so `torch.manual_seed` and DataLoader worker seeding make them reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from tal_infer.errors import DataError

from .protocols import TrainRecord
from .records import ImageRecord


@dataclass(frozen=True)
class Augment:
    flip: bool = True          # random horizontal flip, p = 0.5
    pad: int = 10              # zero-pad this many pixels, then random-crop back (0 = off)
    color_jitter: float = 0.2  # brightness/contrast/saturation factors in [1-s, 1+s] (0 = off)


def read_rgb(path: str, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB [H, W, 3] of the image at `path`, resized bilinearly to `size` = (H, W)."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{path}: cannot read image (missing, empty or not an image)")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def augment_image(img: np.ndarray, aug: Augment) -> np.ndarray:
    """Random flip, pad-and-crop and colour jitter of a uint8 RGB image (same shape out)."""
    if aug.flip and torch.rand(()).item() < 0.5:
        img = img[:, ::-1]
    if aug.pad > 0:
        h, w = img.shape[:2]
        padded = cv2.copyMakeBorder(np.ascontiguousarray(img), aug.pad, aug.pad, aug.pad,
                                    aug.pad, cv2.BORDER_CONSTANT, value=0)
        top, left = (int(torch.randint(0, 2 * aug.pad + 1, ()).item()) for _ in range(2))
        img = padded[top:top + h, left:left + w]
    if aug.color_jitter > 0:
        s = aug.color_jitter
        x = img.astype(np.float32) * _uniform(1 - s, 1 + s)                     # brightness
        x = (x - x.mean()) * _uniform(1 - s, 1 + s) + x.mean()                   # contrast
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * _uniform(1 - s, 1 + s) + gray[..., None]     # saturation
        img = np.clip(x, 0, 255).astype(np.uint8)
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
