"""One shard of a distributed gallery: an ordinary `GalleryIndex` folder and the one retriever.

A `Shard` opens a `ReIDEngine` on the bundle once and owns the index in ``<folder>/index``;
crops that arrive as bytes (the service) are stored in ``<folder>/crops`` by content hash, and
that file's path is the entry's key. Ray runs a `Shard` as an actor (`sharded`); nothing here
needs Ray, so a shard is also usable (and tested) in one process.

Writes go through `GalleryIndex.sync` with the shard's current entries plus the new ones, so
an add is one committed sync per batch: idempotent (the same file again is "unchanged"; new
metadata for it replaces the old), and crash-safe (a killed add either committed a batch or
left nothing the catalog names). Changed files among the current entries are re-extracted
with the shard's own extractor, as `tal-infer --index` would.

Searches run `Retriever(matcher, plan)` on the index snapshot (`index.load()`), exhaustively or
in two stages; the snapshot and its FAISS stage-1 search are kept until the index's catalog
changes (any writer, this shard or `tal-index`), as `Gallery.searchable_snapshot` keeps its
own. A `Scope` narrows the gallery to the entries it selects (a `FeatureSubset`, in path
order, so ties still break by key) before the top-k.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_file
from ..candidates import CandidateSearch
from ..engine import ReIDEngine
from ..errors import TalError
from ..features import DESCRIPTOR, Features, FeatureSubset, num_items
from ..images import read_image
from ..index import IndexContents, IndexRecord
from ..index.gallery import CATALOG
from ..lifecycle import EntryFilter
from ..retrieval import RetrievalOptions, Retriever
from .routing import Hit
from .scope import Scope

INDEX_FOLDER, CROPS_FOLDER = "index", "crops"


@dataclass
class AddReport:
    """What an add did (counts of `SyncReport`), and the (key, reason) it skipped."""
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ShardSearch:
    """What a search asks every shard: the retrieval options, the queries' cameras (for
    same-camera exclusion; -1 unknown) and the scope."""
    options: RetrievalOptions
    query_cameras: np.ndarray | None = None
    scope: Scope | None = None


def record_metadata(record: IndexRecord) -> dict[str, Any]:
    """The metadata a sync needs to keep an entry as it is (the inverse of the index's record
    building: camera, timestamp, label and the extra keys)."""
    meta = dict(record.extra)
    meta.update({k: v for k, v in (("camera", record.camera), ("timestamp", record.timestamp),
                                   ("label", record.label)) if v is not None})
    return meta


class Shard:
    """A gallery shard in ``folder`` for the bundle at ``bundle`` (module doc)."""

    def __init__(self, folder: str | os.PathLike, bundle: str | os.PathLike, *,
                 backend: str = "auto", device: str = "auto", matcher: str = "auto"):
        self.folder = Path(folder)
        self.engine = ReIDEngine(bundle, backend=backend, device=device, matcher=matcher)
        self.index = self.engine.open_index(self.folder / INDEX_FOLDER)
        self.crops = self.folder / CROPS_FOLDER
        self._snapshot: tuple[Any, IndexContents] | None = None
        self._stage1: dict[Any, CandidateSearch] = {}

    # -- writes ---------------------------------------------------------------------------

    def store_crop(self, data: bytes, suffix: str) -> str:
        """Keep an encoded crop in the shard's crop folder (named by its SHA-256, written
        atomically, once); returns its path, the entry's key."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.crops / digest[:2] / f"{digest}{suffix}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as f:
                f.write(data)
        return str(path)

    def add(self, paths: Sequence[str], features: Features | None = None,
            metadata: Sequence[Mapping[str, Any]] | None = None) -> AddReport:
        """Index image files (keys) with their metadata (camera, timestamp, label, any other
        keys), using ``features`` (rows in ``paths`` order) where given, else extracting them;
        every other entry stays (module doc)."""
        paths = [os.path.abspath(p) for p in paths]
        metadata = list(metadata) if metadata is not None else [{}] * len(paths)
        if len(metadata) != len(paths) or (features is not None
                                           and num_items(features) != len(paths)):
            raise TalError(f"add: {len(paths)} keys, {len(metadata)} metadata and "
                           f"{0 if features is None else num_items(features)} feature rows")
        given = {p: i for i, p in enumerate(paths)} if features is not None else {}
        new_meta = dict(zip(paths, metadata))
        current = {r.path: r for r in self._contents().records}

        def metadata_of(path: str) -> Mapping[str, Any]:
            return new_meta[path] if path in new_meta else record_metadata(current[path])

        def extract(batch: list[str]) -> Features:
            missing = [p for p in batch if p not in given]
            fresh = self.engine.embed([read_image(p, self.engine.max_pixels) for p in missing]) \
                if missing else {}
            at = {p: i for i, p in enumerate(missing)}
            keys = features.keys() if features is not None else fresh.keys()
            return {k: np.stack([features[k][given[p]] if p in given else fresh[k][at[p]]
                                 for p in batch]) for k in keys}

        report = self.index.sync([*current, *paths], extract, metadata_of,
                                 batch_size=self.engine.batch_size, on_error="skip")
        self._snapshot = None
        return AddReport(report.added, report.updated, report.unchanged, report.skipped)

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Erase entries by key (unknown keys are ignored); returns the keys erased."""
        return self._forget(self.index.remove(keys).removed)

    def remove_where(self, entries: EntryFilter) -> list[str]:
        """Erase the entries a filter selects (`GalleryIndex.remove_where`)."""
        return self._forget(self.index.remove_where(entries).removed)

    def _forget(self, removed: list[str]) -> list[str]:
        """After an erasure: the crops this shard stored for the erased entries go too."""
        self._snapshot = None
        for key in removed:
            path = Path(key)
            if path.parent.parent == self.crops:
                path.unlink(missing_ok=True)
        return removed

    # -- reads ----------------------------------------------------------------------------

    def check(self) -> int:
        """The entry count, after the index's integrity checks (`IndexDamagedError` else)."""
        return len(self._contents())

    def indexed(self) -> dict[str, tuple[int, int]]:
        """{key: (size, mtime_ns)} of every entry (what a resumed bulk build skips)."""
        return {r.path: (r.size, r.mtime_ns) for r in self._contents().records}

    def fields(self) -> set[str]:
        """The filter keys this shard's entries have (camera, label, extra metadata)."""
        return {"camera", "label"}.union(*(r.extra for r in self._contents().records))

    def stats(self) -> dict[str, Any]:
        contents = self._contents()
        return {"folder": str(self.folder), "entries": len(contents),
                "feature_bytes": self.index.feature_bytes(), "pid": os.getpid(),
                "cameras": sorted({r.camera for r in contents.records
                                   if r.camera is not None})}

    def features(self, keys: Sequence[str]) -> tuple[list[str], Features | None]:
        """(the keys this shard holds, their features in that order)."""
        contents = self._contents()
        column = {r.path: i for i, r in enumerate(contents.records)}
        found = [k for k in keys if k in column]
        if not found:
            return [], None
        return found, contents.take([column[k] for k in found])

    def search(self, queries: Features, request: ShardSearch) -> list[list[Hit]]:
        """Per query, this shard's top-k entries within the scope, best first (module doc)."""
        plan = self.engine.plan(request.options)
        contents = self._contents()
        records = contents.records
        columns = np.arange(len(records)) if request.scope is None else np.flatnonzero(
            [request.scope.selects(r) for r in records])
        nq = num_items(queries)
        if len(columns) == 0:
            return [[] for _ in range(nq)]
        gallery = contents if request.scope is None else FeatureSubset(contents, columns)
        stage1 = None
        if plan.candidates and request.scope is None:
            stage1 = self._stage1.get(plan.stage1)
            if stage1 is None:
                stage1 = CandidateSearch(contents.take(columns, [DESCRIPTOR])[DESCRIPTOR],
                                         plan.stage1)
                self._stage1[plan.stage1] = stage1
        cameras = None
        if plan.exclude_same_camera and request.query_cameras is not None:
            cameras = (np.asarray(request.query_cameras, np.int64),
                       np.array([-1 if records[c].camera is None else records[c].camera
                                 for c in columns], np.int64))
        found = Retriever(self.engine.matcher, plan).retrieve(queries, gallery, cameras,
                                                              stage1=stage1)
        return [[_hit(records[columns[c]], s) for c, s in row] for row in found.rows]

    def _contents(self) -> IndexContents:
        """The index snapshot, reloaded when the catalog changed (file size and mtime)."""
        try:
            st = (self.index.directory / CATALOG).stat()
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if self._snapshot is None or self._snapshot[0] != stamp or stamp is None:
            self._snapshot = (stamp, self.index.load())
            self._stage1 = {}
        return self._snapshot[1]


def _hit(record: IndexRecord, score: float) -> Hit:
    return Hit(record.path, float(score), record.camera, record.timestamp, record.label,
               dict(record.extra))
