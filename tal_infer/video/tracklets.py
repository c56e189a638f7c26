"""Tracklets: a person in one camera is a track, not one crop.

A `Tracklet` is what the tracker chained in one camera: frames, boxes, and a **bounded sample**
of its crops (`CropSample`: at most ``size`` crops, the best by `quality.crop_quality`, no two
closer than ``min_gap`` frames, so the sample spans the track instead of one instant).

Matching two tracklets needs only their samples' features and a crop-vs-crop scoring function
(``score_fn(a, b) -> [len(a), len(b)]``: the TAL score `ReIDEngine.scores`, or
`descriptor_scores`), so it runs wherever the features are: in memory (`Gallery`), in a
`GalleryIndex` (`from_index`), or shard by shard (one `tracklet_scores` call per shard, since a
tracklet's sample lives in one place). `tracklet_scores` scores every crop pair of every two
samples in one call and aggregates each block (`AGGREGATIONS`); ``mutual-best`` (the mean,
over both samples' crops, of each crop's best match in the other sample) is the default, chosen
by measurement (docs/video.md#tracklet-scores).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from ..errors import TalError
from ..features import DESCRIPTOR, Features, num_items, stack_features

ScoreFn = Callable[[Features, Features], np.ndarray]
DEFAULT_SAMPLE = 8
DEFAULT_AGGREGATE = "mutual-best"


def _mutual_best(block: np.ndarray) -> float:
    return 0.5 * float(block.max(axis=1).mean() + block.max(axis=0).mean())


def _top_mean(block: np.ndarray) -> float:
    k = min(block.shape)
    return float(np.sort(block, axis=None)[-k:].mean())


AGGREGATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda block: float(block.mean()),        # every pair alike
    "max": lambda block: float(block.max()),          # the single best pair
    "top-mean": _top_mean,                            # the best min(m, n) pairs
    "mutual-best": _mutual_best,                      # each crop's best partner, both ways
}


@dataclass
class CropSample:
    """At most ``size`` crops of a track: the best by quality, ``min_gap`` frames apart."""
    size: int = DEFAULT_SAMPLE
    min_gap: int = 5
    frames: list[int] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)

    def offer(self, frame: int, quality: float, crop: np.ndarray) -> bool:
        """Keep ``crop`` (copied) if it beats the crops it would replace; True when kept."""
        near = [i for i, f in enumerate(self.frames) if abs(f - frame) < self.min_gap]
        if near:
            if quality <= max(self.quality[i] for i in near):
                return False
            drop = near
        elif len(self.frames) < self.size:
            drop = []
        else:
            worst = int(np.argmin(self.quality))
            if quality <= self.quality[worst]:
                return False
            drop = [worst]
        for i in sorted(drop, reverse=True):
            del self.frames[i], self.quality[i], self.crops[i]
        self.frames.append(frame)
        self.quality.append(float(quality))
        self.crops.append(np.array(crop, copy=True))
        return True


@dataclass
class Tracklet:
    """One track of one camera: every detection the tracker gave it, and a crop sample."""
    camera: int
    track: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    confs: list[float] = field(default_factory=list)
    sample: CropSample = field(default_factory=CropSample)

    @property
    def key(self) -> tuple[int, int]:
        return self.camera, self.track

    @property
    def start(self) -> int:
        return self.frames[0]

    @property
    def end(self) -> int:
        return self.frames[-1]


@dataclass(frozen=True)
class TrackletFeatures:
    """What matching needs of a tracklet: its key, camera, time span in seconds, and the
    features of its crop sample (``[s, ...]`` per key)."""
    key: Hashable
    camera: int
    start: float
    end: float
    features: Features

    def overlaps(self, other: "TrackletFeatures") -> bool:
        return self.start <= other.end and other.start <= self.end


def descriptor_scores(a: Features, b: Features) -> np.ndarray:
    """Cosine similarity of the global descriptors (L2-normalized by the extractor)."""
    if DESCRIPTOR not in a or DESCRIPTOR not in b:
        raise TalError("descriptor scores need a bundle with the global descriptor "
                       "(tal-distill before tal-export)")
    return (np.asarray(a[DESCRIPTOR], np.float32) @ np.asarray(b[DESCRIPTOR], np.float32).T)


def tracklet_scores(score_fn: ScoreFn, queries: Sequence[TrackletFeatures],
                    gallery: Sequence[TrackletFeatures],
                    aggregate: str = DEFAULT_AGGREGATE) -> np.ndarray:
    """``[len(queries), len(gallery)]`` tracklet scores: every crop pair of the two samples
    scored in one ``score_fn`` call, each block reduced by ``AGGREGATIONS[aggregate]``."""
    if aggregate not in AGGREGATIONS:
        raise TalError(f"unknown aggregation {aggregate!r} (one of {', '.join(AGGREGATIONS)})")
    reduce = AGGREGATIONS[aggregate]
    out = np.zeros((len(queries), len(gallery)), np.float32)
    if not len(queries) or not len(gallery):
        return out
    crops = score_fn(stack_features([t.features for t in queries]),
                     stack_features([t.features for t in gallery]))
    q_end = np.cumsum([num_items(t.features) for t in queries])
    g_end = np.cumsum([num_items(t.features) for t in gallery])
    for i, (q1, q0) in enumerate(zip(q_end, np.r_[0, q_end[:-1]])):
        for j, (g1, g0) in enumerate(zip(g_end, np.r_[0, g_end[:-1]])):
            out[i, j] = reduce(crops[q0:q1, g0:g1])
    return out


class TrackletGallery:
    """Tracklets to query by tracklet: ``query(t, k)`` -> the ``k`` best (tracklet, score)."""

    def __init__(self, score_fn: ScoreFn, aggregate: str = DEFAULT_AGGREGATE,
                 tracklets: Iterable[TrackletFeatures] = ()):
        self.score_fn, self.aggregate = score_fn, aggregate
        self.tracklets: list[TrackletFeatures] = list(tracklets)

    def __len__(self) -> int:
        return len(self.tracklets)

    def add(self, tracklets: Iterable[TrackletFeatures]) -> None:
        self.tracklets.extend(tracklets)

    def query(self, tracklet: TrackletFeatures, k: int = 10, other_cameras: bool = False
              ) -> list[tuple[TrackletFeatures, float]]:
        """The best ``k`` tracklets for ``tracklet``, best first (itself left out; with
        ``other_cameras``, every tracklet of its camera too)."""
        pool = [t for t in self.tracklets if t.key != tracklet.key
                and not (other_cameras and t.camera == tracklet.camera)]
        scores = tracklet_scores(self.score_fn, [tracklet], pool, self.aggregate)[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(pool[i], float(scores[i])) for i in order]


def group_entries(take: Callable[[np.ndarray], Features], cameras: Sequence[int],
                  metas: Sequence[dict[str, Any]], limit: int = DEFAULT_SAMPLE
                  ) -> list[TrackletFeatures]:
    """Tracklets from gallery entries (one crop each) whose metadata carries ``track``,
    ``start``, ``end`` (seconds) and optionally ``quality``: entries grouped by (camera,
    track), each group's best ``limit`` by quality read through ``take(columns)``."""
    groups: dict[tuple[int, Any], list[int]] = {}
    for column, (camera, meta) in enumerate(zip(cameras, metas)):
        if isinstance(meta, dict) and "track" in meta:
            groups.setdefault((int(camera), meta["track"]), []).append(column)
    out = []
    for (camera, track), columns in groups.items():
        columns.sort(key=lambda c: -float(metas[c].get("quality", 0.0)))
        best = np.array(columns[:limit], np.int64)
        out.append(TrackletFeatures((camera, track), camera,
                                    min(float(metas[c]["start"]) for c in columns),
                                    max(float(metas[c]["end"]) for c in columns), take(best)))
    return out


def from_gallery(gallery: Any, limit: int = DEFAULT_SAMPLE) -> list[TrackletFeatures]:
    """Tracklets of an in-memory `Gallery` whose entries were added with tracklet metadata."""
    features, _, cameras, _, metas = gallery.snapshot()
    if features is None:
        return []
    return group_entries(lambda cols: {k: v[cols] for k, v in features.items()}, cameras,
                         metas, limit)


def from_index(contents: Any, limit: int = DEFAULT_SAMPLE) -> list[TrackletFeatures]:
    """Tracklets of a `GalleryIndex` snapshot (`GalleryIndex.load()`) whose crops were synced
    with tracklet metadata (``camera`` and the extra keys of `group_entries`)."""
    return group_entries(contents.take, [-1 if r.camera is None else r.camera
                                         for r in contents.records],
                         [r.extra for r in contents.records], limit)
