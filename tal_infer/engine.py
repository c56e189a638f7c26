"""Python API for video analytics: `ReIDEngine` (a bundle loaded once) and `Gallery`.

    engine = ReIDEngine("export/p2-market1501")            # or ReIDEngine() = latest bundle
    feats = engine.embed([crop1, crop2])                      # numpy BGR crops, any size
    gallery = Gallery()
    ids = gallery.add(feats, camera=[0, 0], timestamp=[12.0, 12.5], meta=[{"track": 3}] * 2)
    for hits in engine.match(engine.embed([crop3]), gallery, k=5):
        print([(m.id, m.score, m.camera) for m in hits])

Features are dicts ``{output name: array [N, ...]}`` in match layout
(`tal_infer.features.match_layout`), the global descriptor ``[N, D]`` included, and in the
bundle's precision (float16 or float32, read once from the manifest: `ReIDEngine.precision`).
``backend`` chooses the extractor backend, ``matcher`` the matching backend
(`tal_infer.backends`). ``match(..., candidates=M)`` retrieves in two stages (FAISS candidates
by descriptor, then the TAL score on them only; `tal_infer.cascade`); ``remove_where`` and
``drop_older_than`` take entries out by metadata or age (`tal_infer.lifecycle`). Many threads
embedding a few crops each share the extractor through `ReIDEngine.batcher` (a
`MicroBatcher`): their crops run as full batches, and no crop waits longer than
``max_latency_s`` for its batch to start.
"""
from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from .backends import open_extractor, open_matcher, resolve_device
from .batching import MicroBatcher
from .bundle import Bundle, find_latest_bundle, load_bundle
from .candidates import CandidateOptions, CandidateSearch
from .cascade import require_descriptor, shortlist
from .errors import TalError
from .features import (DESCRIPTOR, FeatureArrays, Features, FeatureSource, num_items,
                       outputs_in_match_layout, stack_features)
from .images import DEFAULT_MAX_PIXELS, ImageError, read_image, resize_batch, to_bgr_uint8
from .index import GalleryIndex, SyncReport, market_metadata
from .lifecycle import EntryFilter
from .scoring import Ranking, rank_gallery


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


def _per_item(values: Any, n: int, what: str) -> list:
    """A scalar (or None) for every item, or one value per item."""
    if values is None or np.isscalar(values) or isinstance(values, dict):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise TalError(f"Gallery.add: {len(values)} {what} values for {n} items")
    return values


class Gallery:
    """In-memory gallery of embedded crops with camera, timestamp and free metadata (thread-safe).

    Rows are appended; `remove` drops rows by id, `remove_where` by metadata, `drop_older_than`
    by timestamp; dropped rows leave the arrays (nothing keeps them). Ids are unique for the
    gallery's lifetime.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._parts: list[Features] = []
        self._features: Features | None = None
        self._search: tuple[CandidateOptions, CandidateSearch] | None = None  # for this content
        self.ids = np.zeros(0, np.int64)
        self.cameras = np.zeros(0, np.int64)  # -1 = unknown
        self.timestamps = np.zeros(0, np.float64)  # NaN = unknown
        self.meta: list[Any] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, features: Features, camera: int | Iterable[int] | None = None,
            timestamp: float | Iterable[float] | None = None, meta: Any = None) -> list[int]:
        """Add N embedded crops (`ReIDEngine.embed` output); returns their new ids."""
        n = num_items(features)
        cams = [-1 if c is None else int(c) for c in _per_item(camera, n, "camera")]
        times = [np.nan if t is None else float(t) for t in _per_item(timestamp, n, "timestamp")]
        metas = _per_item(meta, n, "meta")
        with self._lock:
            if self._parts and set(features) != set(self._parts[0]):
                raise TalError(f"Gallery.add: features {sorted(features)} differ from the "
                               f"gallery's {sorted(self._parts[0])} (another model?)")
            new = [next(self._ids) for _ in range(n)]
            self._parts.append({k: np.asarray(v) for k, v in features.items()})
            self._features, self._search = None, None
            self.ids = np.concatenate([self.ids, new])
            self.cameras = np.concatenate([self.cameras, cams])
            self.timestamps = np.concatenate([self.timestamps, times])
            self.meta.extend(metas)
        return new

    def remove(self, ids: int | Iterable[int]) -> int:
        """Drop entries by id; returns how many were removed (unknown ids are ignored)."""
        wanted = np.atleast_1d(np.asarray(ids if np.isscalar(ids) else list(ids), np.int64))
        with self._lock:
            return self._drop(np.isin(self.ids, wanted))

    def remove_where(self, entries: EntryFilter) -> int:
        """Drop the entries the filter selects; its fields are ``camera`` and the keys of dict
        metadata (e.g. ``EntryFilter({"track": 7})``). Returns how many were removed."""
        with self._lock:
            drop = [entries.matches(_fields(cam, meta), None if np.isnan(t) else float(t))
                    for cam, t, meta in zip(self.cameras, self.timestamps, self.meta)]
            return self._drop(np.array(drop, dtype=bool))

    def drop_older_than(self, cutoff: float) -> int:
        """Retention: drop entries whose timestamp is before ``cutoff`` (same clock as the
        timestamps given to `add`; entries without one stay). Returns how many left."""
        return self.remove_where(EntryFilter(before=cutoff))

    def searchable_snapshot(self, options: CandidateOptions
                            ) -> tuple[tuple, CandidateSearch | None]:
        """(`snapshot`, stage-1 search over exactly those entries; None while the gallery is
        empty). The search is kept until the gallery changes."""
        with self._lock:
            snapshot = self._snapshot()
            features = snapshot[0]
            if features is None:
                return snapshot, None
            if self._search is None or self._search[0] != options:
                require_descriptor(features)
                self._search = options, CandidateSearch(features[DESCRIPTOR], options)
            return snapshot, self._search[1]

    def _drop(self, drop: np.ndarray) -> int:
        """Remove the rows where ``drop`` is set (under the lock)."""
        if not drop.any():
            return 0
        keep = ~drop
        features = self._consolidated()
        if features is not None:
            self._parts = [{k: v[keep] for k, v in features.items()}]
            self._features, self._search = None, None
        self.ids, self.cameras = self.ids[keep], self.cameras[keep]
        self.timestamps = self.timestamps[keep]
        self.meta = [m for m, k in zip(self.meta, keep) if k]
        return int(drop.sum())

    def snapshot(self) -> tuple[Features | None, np.ndarray, np.ndarray, np.ndarray, list]:
        """(features, ids, cameras, timestamps, meta), consistent with each other."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> tuple[Features | None, np.ndarray, np.ndarray, np.ndarray, list]:
        return self._consolidated(), self.ids, self.cameras, self.timestamps, list(self.meta)

    def _consolidated(self) -> Features | None:
        if self._features is None and self._parts:
            self._features = stack_features(self._parts)
            self._parts = [self._features]
        return self._features


class ReIDEngine:
    """A bundle loaded once: its precision, extractor backend, matching backend and preprocessing.

    ``backend``: extractor backend (`tal_infer.backends.EXTRACTOR_BACKENDS`); ``matcher``:
    matching backend (`MATCH_BACKENDS`). ``max_pixels`` bounds the size image files may declare
    (`embed_files`; None: no limit), the guard against decompression bombs (`tal_infer.images`).
    """

    def __init__(self, model: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 device: str = "auto", batch_size: int = 32, verify: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, matcher: str = "auto"):
        if batch_size < 1:
            raise TalError(f"batch size must be >= 1, got {batch_size}")
        if max_pixels is not None and max_pixels < 1:
            raise TalError(f"max_pixels must be >= 1 or None, got {max_pixels}")
        if not isinstance(model, Bundle):
            model = load_bundle(find_latest_bundle() if model is None else model, verify=verify)
        self.bundle = model
        self.precision = model.precision
        self.device = resolve_device(device)
        self.extractor = open_extractor(model, backend, self.device, self.precision)
        self.scorer = open_matcher(model, self.extractor, self.device, matcher, self.precision)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    def embed(self, crops: Sequence[np.ndarray]) -> Features:
        """Features of numpy crops (BGR as OpenCV gives them, any size; gray/BGRA/16-bit ok)."""
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
                    progress: bool = False, desc: str = "extracting") -> Embedded:
        """Features of image files; ``on_error="skip"`` leaves unreadable files out."""
        if on_error not in ("fail", "skip"):
            raise TalError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
        kept, skipped, parts = [], [], []
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
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

    def rank(self, queries: Features, gallery: FeatureSource | Features, k: int,
             cameras: tuple[np.ndarray, np.ndarray] | None = None, keep_scores: bool = False,
             progress: bool = False) -> Ranking:
        """Top-``k`` gallery columns per query (`tal_infer.scoring.rank_gallery`), the gallery
        (in-memory features or a `FeatureSource` such as an index snapshot) streamed in chunks
        the matcher's memory budget allows."""
        if isinstance(gallery, dict):
            gallery = FeatureArrays(gallery)
        chunks = gallery.iter_chunks(self.scorer.chunk_size(num_items(queries)))
        return rank_gallery(self.scorer, queries, chunks, len(gallery), k, cameras, keep_scores,
                            progress)

    def scores(self, queries: Features, gallery: FeatureSource | Features) -> np.ndarray:
        """float32 ``[Nq, Ng]`` (higher = more similar), the gallery streamed in chunks."""
        return self.rank(queries, gallery, k=0, keep_scores=True).scores

    def match(self, queries: Features, gallery: Gallery, k: int = 10,
              query_cameras: Iterable[int] | None = None, candidates: int = 0,
              search: CandidateOptions | str = "exact",
              prerank: int | None = None) -> list[list[Match]]:
        """Top-``k`` gallery entries per query, best first. With ``query_cameras``, entries
        from a query's own camera are left out (cross-camera linking). ``candidates=M > 0``:
        two-stage retrieval, the TAL score only on each query's top M by descriptor (found
        with FAISS, ``search`` "exact", "ivf", "hnsw" or `CandidateOptions`), narrowed from
        a wider top ``prerank`` by the DI stream's score (None: 10 x M, at most 5% of the
        gallery, where the model has that stream; 0: no pre-rank; `tal_infer.cascade`);
        ``candidates=0`` scores every entry."""
        if candidates < 0:
            raise TalError(f"candidates must be >= 0, got {candidates}")
        if prerank and not candidates:
            raise TalError("prerank narrows the candidates' shortlist: give candidates=M too")
        options = search if isinstance(search, CandidateOptions) else CandidateOptions(
            search, device=self.device)
        nq = num_items(queries)
        stage1 = None
        if candidates and nq:
            (features, ids, cams, times, meta), stage1 = gallery.searchable_snapshot(options)
        else:
            features, ids, cams, times, meta = gallery.snapshot()
        if features is None or nq == 0:
            return [[] for _ in range(nq)]
        cameras = None
        if query_cameras is not None:
            cameras = (np.array([-1 if c is None else c for c in _per_item(query_cameras, nq,
                                                                           "camera")]), cams)
        if stage1 is not None:
            rows = shortlist(self.scorer, queries, FeatureArrays(features).take, stage1,
                             candidates, cameras, prerank=prerank).rows(k)
        else:
            rows = self.rank(queries, features, k, cameras).topk.rows()
        return [[Match(int(ids[c]), s, None if cams[c] < 0 else int(cams[c]),
                       None if np.isnan(times[c]) else float(times[c]), meta[c])
                 for c, s in row] for row in rows]

    def open_index(self, directory: str | os.PathLike, rebuild: bool = False) -> GalleryIndex:
        """The gallery index in ``directory`` for this engine's bundle (`bundle_index`)."""
        return bundle_index(self.bundle, directory, rebuild)

    def sync_index(self, index: GalleryIndex, paths: Sequence[str | os.PathLike],
                   on_error: str = "fail", progress: bool = False) -> SyncReport:
        """Make ``index`` hold exactly the image files ``paths``, extracting only new and
        changed ones (`GalleryIndex.sync`); camera and label from Market-1501-style names."""
        return index.sync(paths, lambda batch: self.embed(
                              [read_image(p, self.max_pixels) for p in batch]),
                          market_metadata, batch_size=self.batch_size, on_error=on_error,
                          progress=progress)

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


def _fields(camera: int, meta: Any) -> dict[str, Any]:
    """What an `EntryFilter` compares for one in-memory entry."""
    fields = dict(meta) if isinstance(meta, dict) else {}
    if camera >= 0:
        fields["camera"] = int(camera)
    return fields


def _checked_crop(crop: np.ndarray) -> np.ndarray:
    """A crop as the extractor batch takes it, or `ImageError` describing this crop."""
    shape = getattr(crop, "shape", None)
    return to_bgr_uint8(crop, name="crop" if shape is None else f"crop of shape {shape}")


