"""Our appearance vectors in a standard multi-object tracker: DeepSORT (deep-sort-realtime).

DeepSORT associates detections to tracks by appearance (cosine distance to each track's recent
appearance vectors, gated by the Kalman filter's motion), then by box overlap. The library's
``update_tracks(detections, embeds=...)`` takes one appearance vector per detection, so the
TAL descriptor goes in as it is (`embed_boxes(..., outputs=[DESCRIPTOR])`); the library's own
embedders (which would load weights) are never created. Why this library and not boxmot or
Roboflow's ``trackers``: docs/video.md#the-tracker.

``appearance=False`` is the same tracker without appearance: every detection gets the same
vector and the cosine gate is set below zero, so the appearance stage never matches and
association falls to DeepSORT's IoU stage on Kalman predictions (SORT-like). That is the
"tracker without appearance" baseline of benchmarks/mtmc.py.

`TrackerAdapter.update` returns, per frame, ``(track id, detection position)`` for every track
that took a detection in that frame, tentative tracks included; `TrackletBuilder` turns those
into `Tracklet`s and keeps only tracks the tracker confirmed (``n_init`` hits), with their
tentative first detections, so a track's first frames are not lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import TalError
from .tracklets import CropSample, Tracklet


@dataclass(frozen=True)
class TrackerOptions:
    appearance: bool = True
    max_age: int = 30            # frames a lost track waits for its person
    n_init: int = 3              # hits before a track is confirmed
    max_cosine_distance: float = 0.3
    max_iou_distance: float = 0.7
    nn_budget: int = 50          # appearance vectors kept per track


def _deep_sort():
    try:
        from deep_sort_realtime.deepsort_tracker import DeepSort
    except ImportError:
        raise TalError("tracking needs the deep-sort-realtime package: pip install "
                       "'tal-reid[video]'") from None
    return DeepSort


class TrackerAdapter:
    """One camera's DeepSORT, fed xyxy boxes, confidences and our vectors."""

    def __init__(self, options: TrackerOptions = TrackerOptions()):
        self.options = options
        gate = options.max_cosine_distance if options.appearance else -1.0
        self.tracker = _deep_sort()(max_age=options.max_age, n_init=options.n_init,
                                    max_cosine_distance=gate,
                                    max_iou_distance=options.max_iou_distance,
                                    nn_budget=options.nn_budget, embedder=None)

    def update(self, boxes: np.ndarray, confs: np.ndarray, vectors: np.ndarray | None
               ) -> tuple[list[tuple[int, int]], set[int]]:
        """Track one frame: ([(track id, detection position)], ids of confirmed tracks)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not self.options.appearance or vectors is None:
            vectors = np.ones((len(boxes), 1), np.float32)
        raw = [([b[0], b[1], b[2] - b[0], b[3] - b[1]], float(c), "person")
               for b, c in zip(boxes, confs)]
        tracks = self.tracker.update_tracks(raw, embeds=list(np.asarray(vectors, np.float32)),
                                            others=list(range(len(boxes))))
        matched = [(int(t.track_id), int(t.others)) for t in tracks
                   if t.time_since_update == 0 and t.others is not None]
        confirmed = {int(t.track_id) for t in tracks if t.is_confirmed()}
        return matched, confirmed


class TrackletBuilder:
    """Collects one camera's tracker output into tracklets with bounded crop samples."""

    def __init__(self, camera: int, sample_size: int, min_gap: int):
        self.camera, self.sample_size, self.min_gap = camera, sample_size, min_gap
        self.tracklets: dict[int, Tracklet] = {}
        self.confirmed: set[int] = set()

    def add(self, frame: int, matched: list[tuple[int, int]], confirmed: set[int],
            boxes: np.ndarray, confs: np.ndarray, quality: Callable[[int], float],
            crop: Callable[[int], np.ndarray]) -> None:
        """Record one frame's matches; ``quality(d)`` and ``crop(d)`` of detection d."""
        self.confirmed |= confirmed
        for track, d in matched:
            t = self.tracklets.get(track)
            if t is None:
                t = self.tracklets[track] = Tracklet(
                    self.camera, track, sample=CropSample(self.sample_size, self.min_gap))
            t.frames.append(frame)
            t.boxes.append(np.asarray(boxes[d], np.float64))
            t.confs.append(float(confs[d]))
            q = quality(d)
            if q > 0:
                t.sample.offer(frame, q, crop(d))

    def finish(self, min_length: int = 1) -> list[Tracklet]:
        """Confirmed tracks with at least ``min_length`` detections and one sampled crop."""
        return [t for track, t in sorted(self.tracklets.items())
                if track in self.confirmed and len(t.frames) >= min_length and t.sample.crops]
