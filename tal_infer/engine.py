"""Python API for video analytics: `ReIDEngine` (a bundle loaded once) and `Gallery`
(`tal_infer.index.in_memory`).

    engine = ReIDEngine("export/p2-market1501")            # or ReIDEngine() = latest bundle
    feats = engine.embed([crop1, crop2])                      # numpy BGR crops, any size
    gallery = Gallery()
    ids = gallery.add(feats, camera=[0, 0], timestamp=[12.0, 12.5], meta=[{"track": 3}] * 2)
    for hits in engine.match(engine.embed([crop3]), gallery, k=5):
        print([(m.id, m.score, m.camera) for m in hits])

Features are dicts ``{output name: array [N, ...]}`` in match layout
(`tal_infer.features.match_layout`), the global descriptor ``[N, D]`` included, and in the
bundle's precision (float16 or float32, read once from the manifest: `ReIDEngine.precision`).
``backend`` chooses the extractor backend (`tal_infer.backends`), ``matcher`` the matching
backend (`tal_infer.matching`), each decided once when the engine opens. ``match`` runs the
one retrieval pipeline (`tal_infer.retrieval`): ``candidates=M`` retrieves in two stages (FAISS
candidates by descriptor, then the TAL score on them only; `tal_infer.cascade`); ``remove_where`` and
``drop_older_than`` take entries out by metadata or age (`tal_infer.lifecycle`). Many threads
embedding a few crops each share the extractor through `ReIDEngine.batcher` (a
`MicroBatcher`): their crops run as full batches, and no crop waits longer than
``max_latency_s`` for its batch to start.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import numpy as np

from .backends import open_extractor
from .batching import MicroBatcher
from .bundle import Bundle, find_latest_bundle, load_bundle
from .console import progress
from .devices import resolve_device
from .errors import TalError
from .features import (FeatureArrays, Features, FeatureSource, num_items,
                       outputs_in_match_layout, stack_features)
from .images import (DEFAULT_MAX_PIXELS, MIN_SIDE, ImageError, read_image, resize_batch,
                     set_decoder_pixel_limit, to_bgr_uint8)
from .index import GalleryIndex, SyncReport, market_metadata
from .index.in_memory import Gallery
from .matching import Matcher, choose_match_backend, match_device, open_matcher
from .retrieval import RetrievalOptions, RetrievalPlan, Retriever, plan_retrieval
from .retrieval import query_cameras as camera_array

if TYPE_CHECKING:
    from .video.boxes import BoxFeatures

log = logging.getLogger("tal_infer")


class Match(NamedTuple):
    """One gallery hit: the id `Gallery.add` returned, its score, and what travelled with it."""
    id: int
    score: float
    camera: int | None
    timestamp: float | None
    meta: Any


@dataclass
class Embedded:
    """`ReIDEngine.embed_files` result: features of the files kept, and (path, reason) skipped."""
    features: Features
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ReIDEngine:
    """A bundle loaded once: its precision, extractor backend, matcher and preprocessing.

    ``backend``: extractor backend (`tal_infer.backends.EXTRACTOR_BACKENDS`); ``matcher``:
    matching backend (`tal_infer.matching.MATCH_BACKENDS`); ``device``: auto, cpu or cuda
    (`tal_infer.devices`). All three are decided here, once, and logged in one line
    (`describe`). ``max_pixels`` bounds the size image files may declare (`embed_files`;
    None: no limit), the guard against decompression bombs (`tal_infer.images`).
    """

    def __init__(self, model: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 device: str = "auto", batch_size: int = 32, verify: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, matcher: str = "auto"):
        if batch_size < 1:
            raise TalError(f"batch size must be >= 1, got {batch_size}")
        if max_pixels is not None and max_pixels < 1:
            raise TalError(f"max_pixels must be >= 1 or None, got {max_pixels}")
        set_decoder_pixel_limit(max_pixels)  # OpenCV's own limit, fixed when it first loads
        if not isinstance(model, Bundle):
            model = load_bundle(find_latest_bundle() if model is None else model, verify=verify)
        self.bundle = model
        self.precision = model.precision
        self.device = resolve_device(device)
        self.extractor = open_extractor(model, backend, self.device, self.precision)
        where = match_device(self.device)
        channels = next(iter(model.features.values())).match_shape[-1]
        chosen = choose_match_backend(matcher, where, self.precision, channels,
                                      self.extractor.name)
        self.matcher: Matcher = open_matcher(model, chosen, where, self.precision)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        log.info("%s", self.describe())

    def describe(self) -> str:
        """The one line saying what runs where."""
        return (f"model: {self.bundle.path} ({self.precision.dtype}); extractor: "
                f"{self.extractor.name} on {self.extractor.device}; matching: "
                f"{self.matcher.name} on {self.matcher.device}")

    def plan(self, options: RetrievalOptions = RetrievalOptions()) -> RetrievalPlan:
        """The retrieval plan of ``options`` for this engine (`tal_infer.retrieval`); one
        `TalError` line for anything that cannot run (no FAISS, no descriptor, a bad width)."""
        return plan_retrieval(options, self.matcher, self.bundle.descriptor_dim, self.device)

    def retriever(self, plan: RetrievalPlan) -> Retriever:
        return Retriever(self.matcher, plan)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> Features:
        """Features of numpy crops (BGR as OpenCV gives them, any size; gray/BGRA/16-bit ok):
        a list of crops, or one array ``[N, H, W, 3]`` of N crops of one size."""
        crops = _crop_list(crops)
        if len(crops) == 0:
            return {k: np.zeros((0, *shape), self.precision.numpy_dtype)
                    for k, shape in self.bundle.output_shapes.items()}
        parts = []
        for start in range(0, len(crops), self.batch_size):
            batch = resize_batch(crops[start:start + self.batch_size], self.bundle.height,
                                 self.bundle.width)
            parts.append(outputs_in_match_layout(self.extractor(batch)))
        return stack_features(parts)

    def embed_files(self, paths: Sequence[str | os.PathLike], on_error: str = "fail",
                    desc: str = "extracting") -> Embedded:
        """Features of image files; ``on_error="skip"`` leaves unreadable files out."""
        if on_error not in ("fail", "skip"):
            raise TalError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
        kept, skipped, parts = [], [], []
        with progress(total=len(paths), desc=desc, unit="img") as bar:
            for start in range(0, len(paths), self.batch_size):
                crops = []
                for path in paths[start:start + self.batch_size]:
                    try:
                        crops.append(read_image(path, self.max_pixels))
                        kept.append(str(path))
                    except ImageError as err:
                        if on_error == "fail":
                            raise
                        skipped.append((str(path), err.problem))
                if crops:
                    parts.append(self.embed(crops))
                bar.update(min(self.batch_size, len(paths) - start))
        features = stack_features(parts) if parts else self.embed([])
        return Embedded(features, kept, skipped)

    def scores(self, queries: Features, gallery: FeatureSource | Features) -> np.ndarray:
        """float32 ``[Nq, Ng]`` (higher = more similar), the gallery streamed in chunks."""
        if isinstance(gallery, dict):
            gallery = FeatureArrays(gallery)
        return self.retriever(self.plan()).scores(queries, gallery)

    def match(self, queries: Features, gallery: Gallery, k: int = 10,
              query_cameras: Iterable[int] | int | None = None, candidates: int = 0,
              search: str = "exact", prerank: int | None = None) -> list[list[Match]]:
        """Top-``k`` gallery entries per query, best first. With ``query_cameras`` (one per
        query, or one for all; None = unknown), entries from a query's own camera are left
        out (cross-camera linking). ``candidates=M > 0``: two-stage retrieval, the TAL score
        only on each query's top M by descriptor (found with FAISS, ``search`` "exact", "ivf"
        or "hnsw"), narrowed from a wider top ``prerank`` by the DI stream's score (None: 10
        x M, at most 5% of the gallery, where the model has that stream; 0: no pre-rank;
        `tal_infer.retrieval`); ``candidates=0`` scores every entry."""
        plan = self.plan(RetrievalOptions(k, candidates, prerank, search,
                                          exclude_same_camera=query_cameras is not None))
        n = num_items(queries) if queries else 0
        cams_q = None if query_cameras is None else camera_array(query_cameras, n)
        if plan.candidates and n:
            (features, ids, cams, times, meta), stage1 = gallery.searchable_snapshot(
                plan.stage1)
        else:
            (features, ids, cams, times, meta), stage1 = gallery.snapshot(), None
        if features is None or n == 0:
            return [[] for _ in range(n)]
        found = self.retriever(plan).retrieve(
            queries, features, None if cams_q is None else (cams_q, cams), stage1=stage1)
        return [[Match(int(ids[c]), s, None if cams[c] < 0 else int(cams[c]),
                       None if np.isnan(times[c]) else float(times[c]), meta[c])
                 for c, s in row] for row in found.rows]

    def embed_boxes(self, frames: Any, boxes: Any, min_side: int = MIN_SIDE,
                    outputs: Sequence[str] | None = None) -> "BoxFeatures":
        """Features of detections cut from frames: one frame and its [n, 4] xyxy boxes, or
        lists of both (`tal_infer.video.boxes.embed_boxes`); boxes clipped, unusable ones
        skipped with the reason; ``outputs=[DESCRIPTOR]`` for one vector per detection."""
        from .video.boxes import embed_boxes

        return embed_boxes(self, frames, boxes, min_side, outputs)

    def open_index(self, directory: str | os.PathLike, rebuild: bool = False) -> GalleryIndex:
        """The gallery index in ``directory`` for this engine's bundle (`bundle_index`)."""
        return bundle_index(self.bundle, directory, rebuild)

    def sync_index(self, index: GalleryIndex, paths: Sequence[str | os.PathLike],
                   on_error: str = "fail") -> SyncReport:
        """Make ``index`` hold exactly the image files ``paths``, extracting only new and
        changed ones (`GalleryIndex.sync`); camera and label from Market-1501-style names."""
        return index.sync(paths, lambda batch: self.embed(
                              [read_image(p, self.max_pixels) for p in batch]),
                          market_metadata, batch_size=self.batch_size, on_error=on_error)

    def batcher(self, max_batch: int | None = None, max_latency_s: float = 0.01
                ) -> MicroBatcher[np.ndarray, Features]:
        """A thread-safe front of `embed`: ``batcher(crop)`` -> that crop's features ([1, ...]);
        crops from many threads run together in batches of up to ``max_batch``. Each crop is
        checked (and converted to BGR uint8) in its caller's thread before it joins a batch, so
        a bad crop raises `ImageError` for its own call only."""
        def run(crops: list[np.ndarray]) -> list[Features]:
            feats = self.embed(crops)
            return [{k: v[i:i + 1] for k, v in feats.items()} for i in range(len(crops))]

        return MicroBatcher(run, max_batch or self.batch_size, max_latency_s,
                            name="reid-embedder", check=_checked_crop)


def bundle_index(bundle: Bundle, directory: str | os.PathLike,
                 rebuild: bool = False) -> GalleryIndex:
    """The gallery index in ``directory`` for ``bundle``: its fingerprint, output shapes (the
    descriptor too, when the bundle has one) and precision (`GalleryIndex`; created when new,
    ``rebuild`` as there)."""
    return GalleryIndex(directory, bundle.fingerprint, bundle.output_shapes,
                        dtype=bundle.precision.dtype, rebuild=rebuild)


def _crop_list(crops: Sequence[np.ndarray] | np.ndarray) -> Sequence[np.ndarray]:
    """Crops as a sequence: a list as it is, a 4-D array as its N crops; one crop (a 2-D or
    3-D array) is refused with a hint, since its rows would otherwise be taken for crops."""
    if isinstance(crops, np.ndarray):
        if crops.ndim == 4:
            return list(crops)
        raise TalError(f"embed takes a list of crops (or one [N, H, W, 3] array); got one "
                       f"array of shape {crops.shape}: pass [crop]")
    return crops


def _checked_crop(crop: np.ndarray) -> np.ndarray:
    """A crop as the extractor batch takes it, or `ImageError` describing this crop."""
    shape = getattr(crop, "shape", None)
    return to_bgr_uint8(crop, name="crop" if shape is None else f"crop of shape {shape}")


