"""How useful a detection's crop is for re-identification: size x sharpness x visibility.

A tracklet keeps only a bounded sample of its crops (`tal_infer.video.tracklets`), so the sample
should be the crops that carry the most identity:

- **size**: ``min(1, crop height / model input height)``: a crop smaller than the model's input
  is upscaled and loses detail; larger ones add nothing;
- **sharpness**: ``v / (v + SHARPNESS_HALF)`` with ``v`` the variance of the Laplacian of the
  grey crop (the usual focus measure; motion blur and defocus lower it);
- **visibility**: ``1 - occlusion``, where occlusion is the part of the box covered by the
  other boxes of the frame whose bottom edge is lower (people nearer the camera stand in
  front), summed over those boxes and capped at 1.

All three are in [0, 1] and multiply, so a crop needs all of them to rank high.
"""
from __future__ import annotations

import cv2
import numpy as np

SHARPNESS_HALF = 100.0  # Laplacian variance at which the sharpness term is 0.5


def occlusion(boxes: np.ndarray) -> np.ndarray:
    """Per xyxy box of one frame, the part of its area covered by boxes in front of it."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    w = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    h = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    in_front = y1[None, :] > y1[:, None]  # [i, j]: j's feet are lower than i's
    covered = (w * h * in_front).sum(axis=1)
    area = np.maximum((x1 - x0) * (y1 - y0), 1e-9)
    return np.minimum(covered / area, 1.0)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop, mapped to [0, 1)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    v = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return v / (v + SHARPNESS_HALF)


def crop_quality(crop: np.ndarray, occluded: float, model_height: int) -> float:
    """Size x sharpness x visibility of one crop (module doc)."""
    size = min(1.0, crop.shape[0] / model_height)
    return size * sharpness(crop) * (1.0 - float(occluded))
