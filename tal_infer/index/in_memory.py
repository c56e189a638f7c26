"""The in-memory gallery of the Python API: embedded crops with camera, timestamp and metadata,
for video pipelines that add and search as they go (`ReIDEngine.match`). Its persistent twin
is `GalleryIndex` (same package); both give the retriever a feature snapshot
(`tal_infer.features.FeatureSource`).
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Iterable

import numpy as np

from ..candidates import CandidateOptions, CandidateSearch
from ..cascade import require_descriptor
from ..errors import TalError
from ..features import DESCRIPTOR, Features, num_items, stack_features
from ..lifecycle import EntryFilter


def _per_item(values: Any, n: int, what: str) -> list:
    """A scalar (or None) for every item, or one value per item."""
    if values is None or np.isscalar(values) or isinstance(values, dict):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise TalError(f"Gallery.add: {len(values)} {what} values for {n} items")
    return values


def _whole(value: Any, what: str) -> int:
    """A camera number: a whole number >= 0 (None means unknown)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise TalError(f"Gallery.add: {what} must be a whole number >= 0 or None, not "
                       f"{value!r}")
    return int(number)


def _finite(value: Any) -> float:
    """A timestamp: a finite number (None means unknown)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number):
        raise TalError(f"Gallery.add: timestamp must be a finite number or None, not {value!r}")
    return number


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
        cams = [-1 if c is None else _whole(c, "camera") for c in _per_item(camera, n, "camera")]
        times = [np.nan if t is None else _finite(t) for t in _per_item(timestamp, n,
                                                                         "timestamp")]
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
            fields = [_fields(cam, meta) for cam, meta in zip(self.cameras, self.meta)]
            if fields:  # a misspelt key is an error, not a filter that matches nothing
                entries.require_keys({"camera"}.union(*fields))
            drop = [entries.matches(f, None if np.isnan(t) else float(t))
                    for f, t in zip(fields, self.timestamps)]
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


def _fields(camera: int, meta: Any) -> dict[str, Any]:
    """What an `EntryFilter` compares for one in-memory entry."""
    fields = dict(meta) if isinstance(meta, dict) else {}
    if camera >= 0:
        fields["camera"] = int(camera)
    return fields
