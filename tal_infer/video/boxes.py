"""Detections straight from frames: xyxy boxes cut out as views, clipped, batched across frames.

Detectors give float ``x0, y0, x1, y1`` boxes that may reach past the frame, be empty, or be a
few pixels tall. Each box is clipped to the frame and rounded outwards to whole pixels (a box
covering any part of a pixel takes it); boxes that are not finite, lie outside the frame, have
no area, or whose clipped crop has a side under ``min_side`` pixels are skipped with the reason
(the extractor refuses crops under `tal_infer.images.MIN_SIDE`: upscaled they carry no
identity). Crops are numpy views of the frame (no copy until the batch is resized), and the
boxes of many frames go through the extractor together in batches of ``engine.batch_size``.

``outputs=[DESCRIPTOR]`` keeps only the global descriptor of each detection, batch by batch:
one vector per detection, what a tracker needs at frame rate, without the feature maps
(``(K + 1) x HW x C`` values per crop) piling up in memory. The extractor pass itself is the
same; see docs/video.md for the measured per-detection cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import TalError
from ..features import Features, stack_features
from ..images import MIN_SIDE


class Embedder(Protocol):
    """What `embed_boxes` needs of a `ReIDEngine`."""
    batch_size: int
    bundle: Any

    def embed(self, crops: Sequence[np.ndarray]) -> Features: ...


@dataclass(frozen=True)
class SkippedBox:
    """A box left out: its frame and box position in the call, and why."""
    frame: int
    box: int
    reason: str


@dataclass
class BoxFeatures:
    """`embed_boxes` result: row i of every feature array belongs to box ``kept[i]`` =
    (frame position, box position); ``skipped`` says which boxes have no row and why."""
    features: Features
    kept: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[SkippedBox] = field(default_factory=list)


def pixel_bounds(box: Sequence[float], width: int, height: int,
                 min_side: int = MIN_SIDE) -> tuple[int, int, int, int] | str:
    """Integer ``(x0, y0, x1, y1)`` of a float xyxy box clipped to a ``width`` x ``height``
    frame, or the reason it cannot be used."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "box coordinates are not finite"
    if x1 <= x0 or y1 <= y0:
        return f"box has no area ({x1 - x0:g} x {y1 - y0:g})"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return f"box lies outside the {width}x{height} frame"
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if right - left < min_side or bottom - top < min_side:
        return (f"crop {right - left}x{bottom - top} inside the frame is under the minimum "
                f"side of {min_side} pixels")
    return left, top, right, bottom


def box_crops(frame: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]],
              min_side: int = MIN_SIDE
              ) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]]]:
    """(crops as views of ``frame``, positions of the boxes they come from, (position, reason)
    of the boxes skipped)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = frame.shape[:2]
    crops, kept, skipped = [], [], []
    for i, box in enumerate(boxes):
        bounds = pixel_bounds(box, width, height, min_side)
        if isinstance(bounds, str):
            skipped.append((i, bounds))
            continue
        left, top, right, bottom = bounds
        crops.append(frame[top:bottom, left:right])
        kept.append(i)
    return crops, kept, skipped


def embed_boxes(engine: Embedder, frames: np.ndarray | Sequence[np.ndarray],
                boxes: Any, min_side: int = MIN_SIDE,
                outputs: Sequence[str] | None = None) -> BoxFeatures:
    """Features of the detections of one frame (``frames`` an image, ``boxes`` ``[n, 4]``) or
    of many (a list of frames and a list of ``[n_i, 4]`` box arrays), xyxy in frame pixels.

    Rows follow the frames, then the boxes within a frame, skipped boxes left out
    (`BoxFeatures`). ``outputs`` keeps only those feature keys (e.g. ``[DESCRIPTOR]``).
    """
    if isinstance(frames, np.ndarray):
        frames, boxes = [frames], [boxes]
    if len(frames) != len(boxes):
        raise TalError(f"embed_boxes: {len(frames)} frames but {len(boxes)} box lists")
    keys = None if outputs is None else list(outputs)
    if keys is not None:
        missing = sorted(set(keys) - set(engine.bundle.output_shapes))
        if missing:
            raise TalError(f"embed_boxes: the bundle has no output {', '.join(missing)} "
                           f"(it has {', '.join(sorted(engine.bundle.output_shapes))})")
    crops, kept, skipped = [], [], []
    for f, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
        views, positions, reasons = box_crops(frame, frame_boxes, min_side)
        crops += views
        kept += [(f, b) for b in positions]
        skipped += [SkippedBox(f, b, why) for b, why in reasons]
    parts = []
    for start in range(0, max(len(crops), 1), engine.batch_size):
        feats = engine.embed(crops[start:start + engine.batch_size])
        parts.append(feats if keys is None else {k: feats[k] for k in keys})
    return BoxFeatures(stack_features(parts), kept, skipped)
