"""Tracking and association over a camera network, as library calls (`tal-track run` is a thin
command over them).

Per camera (`track_camera`): frames are decoded in order; the detections of ``frame_batch``
frames (confidence >= ``min_conf``) go through `embed_boxes` together (descriptor only), then
DeepSORT takes them frame by frame (`tracker.TrackerAdapter`); each detection's crop quality is
computed and the tracklet's bounded crop sample updated. After the last frame the samples'
crops are embedded with every feature map (`tracklet_features`). Across cameras (`associate`)
the tracklets get global ids, offline (all at once) or online (in the order they close, i.e.
by end time). `Timings` keeps the seconds spent decoding, extracting, tracking and
associating, the shares benchmarks/mtmc.py reports.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..console import progress
from ..errors import TalError
from ..features import DESCRIPTOR
from ..images import MIN_SIDE
from .association import OnlineAssociator, TransitionWindows, associate_offline
from .boxes import embed_boxes, pixel_bounds
from .frames import Frame, MissingFrame, read_frames
from .network import Camera
from .quality import crop_quality, occlusion
from .tracker import TrackerAdapter, TrackerOptions, TrackletBuilder
from .tracklets import (DEFAULT_AGGREGATE, DEFAULT_SAMPLE, ScoreFn, Tracklet, TrackletFeatures,
                        descriptor_scores, tracklet_scores)

STAGES = ("decoding", "extraction", "tracking", "association")


@dataclass
class Timings:
    """Seconds per stage (`STAGES`)."""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass(frozen=True)
class TrackOptions:
    min_conf: float = 0.5
    min_side: int = MIN_SIDE
    min_length: int = 3          # detections a track needs to count as a tracklet
    sample_size: int = DEFAULT_SAMPLE
    sample_gap: int = 5          # frames between two sampled crops of a tracklet
    frame_batch: int = 8         # frames whose detections are embedded together
    on_missing_frame: str = "fail"
    tracker: TrackerOptions = TrackerOptions()


@dataclass
class CameraResult:
    camera: Camera
    tracklets: list[Tracklet]
    frames: int = 0
    detections: int = 0
    missing: list[MissingFrame] = field(default_factory=list)
    skipped_boxes: int = 0


def _usable_boxes(camera: Camera, frame: Frame, options: TrackOptions
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(xyxy boxes, confidences) of a frame's detections above ``min_conf`` whose crop the
    extractor can take (clipped to the frame, sides >= ``min_side``)."""
    det = camera.detections.get(frame.number, np.zeros((0, 5)))
    det = det[det[:, 4] >= options.min_conf]
    height, width = frame.image.shape[:2]
    keep = [not isinstance(pixel_bounds(b, width, height, options.min_side), str)
            for b in det[:, :4]]
    det = det[np.array(keep, dtype=bool)] if len(det) else det
    return det[:, :4], det[:, 4]


def track_camera(engine, camera: Camera, options: TrackOptions = TrackOptions(),
                 timings: Timings | None = None) -> CameraResult:
    """Tracklets of one camera (module doc)."""
    timings = timings or Timings()
    appearance = options.tracker.appearance
    if appearance and DESCRIPTOR not in engine.bundle.output_shapes:
        raise TalError(f"{engine.bundle.path}: appearance tracking needs the global descriptor "
                       "(tal-distill before tal-export), or run without appearance")
    tracker = TrackerAdapter(options.tracker)
    builder = TrackletBuilder(camera.index, options.sample_size, options.sample_gap)
    result = CameraResult(camera, [])
    pending: list[tuple[Frame, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        vectors: list[np.ndarray | None] = [None] * len(pending)
        if appearance and any(len(b) for _, b, _ in pending):
            with timings.stage("extraction"):
                out = embed_boxes(engine, [f.image for f, _, _ in pending],
                                  [b for _, b, _ in pending], options.min_side, [DESCRIPTOR])
            rows = np.asarray(out.features[DESCRIPTOR], np.float32)
            by_frame: dict[int, list[int]] = defaultdict(list)
            for row, (f, _) in enumerate(out.kept):
                by_frame[f].append(row)
            vectors = [rows[by_frame[i]] for i in range(len(pending))]
        with timings.stage("tracking"):
            for (frame, boxes, confs), vecs in zip(pending, vectors):
                matched, confirmed = tracker.update(boxes, confs, vecs)
                covered = occlusion(boxes)
                height, width = frame.image.shape[:2]

                def crop(d: int, image=frame.image, boxes=boxes) -> np.ndarray:
                    x0, y0, x1, y1 = pixel_bounds(boxes[d], width, height, options.min_side)
                    return image[y0:y1, x0:x1]

                builder.add(frame.number, matched, confirmed, boxes, confs,
                            lambda d: crop_quality(crop(d), covered[d], engine.bundle.height),
                            crop)
        pending.clear()

    frames = read_frames(camera.frames, camera.length, options.on_missing_frame,
                         engine.max_pixels)
    with progress(total=camera.length or None, desc=camera.name, unit="frame") as bar:
        while True:
            with timings.stage("decoding"):
                item = next(frames, None)
            if item is None:
                break
            bar.update(1)
            if isinstance(item, MissingFrame):
                result.missing.append(item)
                continue
            result.frames += 1
            boxes, confs = _usable_boxes(camera, item, options)
            result.detections += len(boxes)
            result.skipped_boxes += int(np.sum(camera.detections.get(
                item.number, np.zeros((0, 5)))[:, 4] >= options.min_conf)) - len(boxes)
            pending.append((item, boxes, confs))
            if len(pending) >= options.frame_batch:
                flush()
        flush()
    if result.frames == 0:
        raise TalError(f"{camera.frames}: no frame could be read")
    result.tracklets = builder.finish(options.min_length)
    return result


def tracklet_features(engine, results: Sequence[CameraResult], timings: Timings | None = None
                      ) -> list[TrackletFeatures]:
    """Every tracklet's sample crops embedded (all feature maps), spans in seconds."""
    timings = timings or Timings()
    tracklets = [(r.camera, t) for r in results for t in r.tracklets]
    crops = [c for _, t in tracklets for c in t.sample.crops]
    with timings.stage("extraction"):
        features = engine.embed(crops)
    out, start = [], 0
    for camera, t in tracklets:
        n = len(t.sample.crops)
        out.append(TrackletFeatures(t.key, camera.index, t.start / camera.fps,
                                    t.end / camera.fps,
                                    {k: v[start:start + n] for k, v in features.items()}))
        start += n
    return out


def score_function(engine, scoring: str) -> ScoreFn:
    """The crop-pair scores of a scoring name: ``tal`` (the TAL heads) or ``descriptor``."""
    if scoring == "tal":
        return engine.scores
    if scoring == "descriptor":
        if DESCRIPTOR not in engine.bundle.output_shapes:
            raise TalError(f"{engine.bundle.path}: descriptor scores need the global descriptor "
                           "(tal-distill before tal-export)")
        return descriptor_scores
    raise TalError(f"unknown scoring {scoring!r} (tal or descriptor)")


def associate(tracklets: Sequence[TrackletFeatures], score_fn: ScoreFn, threshold: float,
              windows: TransitionWindows = TransitionWindows(), mode: str = "offline",
              horizon: float | None = None, aggregate: str = DEFAULT_AGGREGATE,
              timings: Timings | None = None) -> list[int]:
    """Global id per tracklet, ``mode`` "offline" (all at once) or "online" (by end time)."""
    timings = timings or Timings()
    with timings.stage("association"):
        if mode == "offline":
            scores = tracklet_scores(score_fn, tracklets, tracklets, aggregate)
            return associate_offline(tracklets, scores, threshold, windows)
        if mode != "online":
            raise TalError(f"unknown association mode {mode!r} (offline or online)")
        online = OnlineAssociator(score_fn, threshold, windows, horizon, aggregate=aggregate)
        ids = [0] * len(tracklets)
        for i in sorted(range(len(tracklets)), key=lambda i: tracklets[i].end):
            ids[i] = online.assign(tracklets[i])
        return ids


def camera_tracks(result: CameraResult, global_ids: dict[tuple[int, int], int]
                  ) -> list[tuple[int, int, np.ndarray, float]]:
    """(frame, global id, xyxy box, conf) rows of a camera's tracklets."""
    return [(f, global_ids[t.key], b, c) for t in result.tracklets
            for f, b, c in zip(t.frames, t.boxes, t.confs)]


def tracks_by_frame(rows: Sequence[tuple[int, int, np.ndarray, float]]
                    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Track rows as ``{frame: (ids, boxes)}``, the form of `mot.read_ground_truth`."""
    grouped: dict[int, list] = defaultdict(list)
    for frame, gid, box, _ in rows:
        grouped[frame].append((gid, box))
    return {f: (np.array([g for g, _ in v], np.int64), np.array([b for _, b in v]).reshape(-1, 4))
            for f, v in grouped.items()}

