"""`GalleryIndex`: the persistent, incremental, crash-safe gallery.

An index folder holds ``index.sqlite`` (the catalog, `catalog`) and feature files (`store`)
in the dtype the index was made for (the bundle's precision: `ReIDEngine.open_index` passes
it). It is tied to one model by a fingerprint string (any string that changes whenever the
features would, e.g. a hash of the bundle's extractor and input size). The jobs live in their
own modules: the folder, its lock and vetting (`folder`), checked reads of the committed state
(`integrity`), syncing with gallery files (`sync`), compaction and erasure (`maintenance`),
and the snapshot matching reads (`contents`); this class ties them to one folder and model.

Crash safety (a SIGKILL at any point resumes to the result of a clean build):

- appending: feature rows are written past the committed row count and fsynced, then one
  SQLite transaction inserts their catalog rows and raises the count; a crash before the
  commit leaves bytes nobody references, cut off by the next append;
- a sync's removals and metadata updates are single transactions; replaced rows become dead
  space;
- compaction and erasure write a new generation, commit the switch, then delete the old one
  (`maintenance`); leftovers of an interrupted one are deleted by the next writer;
- readers see one committed catalog snapshot and map exactly its rows; a writer never
  modifies committed bytes, so readers need no lock. One writer at a time (a lock file).

Integrity: every open, load, sync and append first checks the catalog and the feature files
(`integrity`); a damaged index raises `IndexDamagedError` and is never used silently.
``rebuild=True`` starts a damaged or mismatched index over, but only in a folder that holds
nothing except index files (`folder`).

"Exactly a clean build" assumes ``extract_fn`` is deterministic per file (batch composition
differs after a resume; real backends can differ in the last bits between batch sizes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..lifecycle import EntryFilter
from . import catalog, maintenance
from .catalog import IndexRecord
from .contents import IndexContents
from .errors import GalleryIndexError, IndexDamagedError, IndexMismatchError, damaged
from .folder import CATALOG, IndexFolder
from .integrity import Snapshot, read_snapshot
from .maintenance import RemovalReport
from .store import FeatureStore
from .sync import ExtractFn, MetadataFn, Sync, SyncReport, market_metadata

_NOT_REBUILDING = "holds files that are not part of a gallery index; not rebuilding it"


class GalleryIndex:
    """A gallery index folder for one model fingerprint, fixed feature item shapes and dtype.

    ``feature_shapes`` maps each feature key to the shape of one item, e.g.
    ``{"ds_res4": (K, HW, C), "di_res4": (HW, C)}``; ``dtype`` ("float16" or "float32") is what
    the features are stored as. A new folder is created; an existing index built for another
    fingerprint (or shapes, or dtype) raises `IndexMismatchError`, a damaged one
    `IndexDamagedError`; with ``rebuild=True`` either is emptied at once (the next `sync` fills
    it again), unless the folder holds files that are not the index's.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str,
                 feature_shapes: Mapping[str, Sequence[int]], *, dtype: str = "float16",
                 rebuild: bool = False):
        self.directory = Path(directory)
        self.fingerprint = str(fingerprint)
        self.store = FeatureStore(self.directory, {k: tuple(v) for k, v in feature_shapes.items()},
                                  dtype)
        self._folder = IndexFolder(self.directory)
        try:
            ready = self._snapshot(with_items=False) is not None
        except (IndexDamagedError, IndexMismatchError):
            if not rebuild:
                raise
            self._folder.refuse_foreign_files(_NOT_REBUILDING)  # before the lock file is made
            ready = False
        if not ready:
            with self._folder.writer():
                self._open_for_writing(rebuild)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "GalleryIndex":
        """An existing index for maintenance (erasure, retention, compaction, statistics),
        whatever model built it: fingerprint and shapes come from its own catalog."""
        folder = IndexFolder(directory)
        if not folder.catalog.is_file():
            raise GalleryIndexError(f"{directory}: not a gallery index (no {CATALOG})")
        with folder.connect() as con:
            raw = catalog.read_info(con)
        if not raw:
            raise GalleryIndexError(f"{directory}: the index was never initialized")
        try:
            info = catalog.parse_info(raw)
        except ValueError as err:
            raise damaged(directory, str(err)) from None
        return cls(directory, info.fingerprint, info.shapes, dtype=info.dtype)

    def sync(self, paths: Iterable[str | os.PathLike], extract_fn: ExtractFn,
             metadata_fn: MetadataFn = market_metadata, batch_size: int = 64,
             on_error: str = "fail") -> SyncReport:
        """Make the index hold exactly ``paths``: extract new and changed files, drop the rest.

        ``extract_fn(paths) -> {key: array [n, *shape]}`` sees only files to (re)extract, in
        batches of ``batch_size``; each batch is committed on its own, so an interrupted sync
        keeps its progress. ``metadata_fn(path)`` gives camera/timestamp/label (any other keys
        are kept as extra metadata). ``on_error="skip"``: files that cannot be read or
        extracted (a `TalError` or `OSError`) are left out and reported instead of failing.
        """
        syncing = Sync(self.store, extract_fn, metadata_fn, on_error)
        wanted = sorted(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths))
        with self._folder.writer(), self._folder.connect() as con:
            self._open_for_writing(rebuild=False)
            report = syncing.run(con, wanted, batch_size)
            maintenance.compact_if_sparse(con, self.store)
        return report

    def load(self) -> IndexContents:
        """The committed contents: records sorted by path, features memory-mapped."""
        snapshot = self._snapshot(with_items=True)
        if snapshot is None:
            raise GalleryIndexError(f"{self.directory}: index is empty (never initialized)")
        rows = np.array([row for _, row in snapshot.items], dtype=np.int64)
        return IndexContents([rec for rec, _ in snapshot.items], rows, snapshot.features)

    def compact(self) -> None:
        """Rewrite the features densely in path order (dead rows dropped, chunks contiguous)."""
        with self._folder.writer(), self._folder.connect() as con:
            self._open_for_writing(rebuild=False)
            maintenance.rewrite(con, self.store)

    def remove(self, paths: Iterable[str | os.PathLike]) -> RemovalReport:
        """Erase entries by path (their id in the index): catalog rows and feature rows leave
        the files (`maintenance`). Unknown paths are ignored."""
        wanted = {os.path.abspath(os.fspath(p)) for p in paths}
        with self._folder.writer(), self._folder.connect() as con:
            self._open_for_writing(rebuild=False)
            return maintenance.erase(con, self.store, lambda rec: rec.path in wanted)

    def select(self, entries: EntryFilter) -> list[IndexRecord]:
        """The committed entries a filter selects (what `remove_where` erases); its fields are
        ``camera`` (as the file names number it), ``label`` and the extra metadata keys, its
        ``before`` compares `entry_time`."""
        snapshot = self._snapshot(with_items=True)
        if snapshot is None:
            return []
        return maintenance.selected(entries, snapshot.info, [rec for rec, _ in snapshot.items])

    def remove_where(self, entries: EntryFilter) -> RemovalReport:
        """Erase the entries a filter selects (`select`)."""
        return self.remove([rec.path for rec in self.select(entries)])

    def drop_older_than(self, cutoff: float) -> RemovalReport:
        """Retention: erase entries whose `entry_time` (seconds since the epoch) is before
        ``cutoff``."""
        return self.remove_where(EntryFilter(before=cutoff))

    def info(self) -> catalog.Info:
        """The committed catalog's info (generation, rows, camera numbering, ...), checked."""
        snapshot = self._snapshot(with_items=False)
        if snapshot is None:
            raise GalleryIndexError(f"{self.directory}: index is empty (never initialized)")
        return snapshot.info

    def feature_bytes(self) -> int:
        """Bytes of every feature file in the folder (all generations present)."""
        return self.store.total_bytes()

    # -- internals ---------------------------------------------------------------------

    def _snapshot(self, with_items: bool) -> Snapshot | None:
        return read_snapshot(self._folder, self.fingerprint, self.store, with_items)

    def _open_for_writing(self, rebuild: bool) -> catalog.Info:
        """Under the writer lock: the checked committed state (generations the catalog does not
        name are deleted: leftovers of an interrupted compaction or erasure), a new catalog for
        a new index, or (``rebuild``) an emptied one in place of a damaged or mismatched
        index."""
        try:
            snapshot = self._snapshot(with_items=False)
        except (IndexDamagedError, IndexMismatchError):
            if not rebuild:
                raise
            self._folder.refuse_foreign_files(_NOT_REBUILDING)
            generation = max(self.store.generations(), default=-1) + 1
            self._folder.delete_catalog()
            self.store.remove_other_generations(None)
            return self._initialize(generation)
        if snapshot is None:
            return self._initialize(max(self.store.generations(), default=-1) + 1)
        self.store.remove_other_generations(snapshot.info.generation)
        return snapshot.info

    def _initialize(self, generation: int) -> catalog.Info:
        """An empty catalog for this model whose features live in ``generation``."""
        with self._folder.connect() as con, catalog.transaction(con):
            catalog.initialize(con, self.fingerprint, self.store.shapes, generation,
                               self.store.dtype_name)
        self.store.remove_other_generations(generation)
        return catalog.Info(self.fingerprint, self.store.shapes, generation, 0,
                            self.store.dtype_name)
