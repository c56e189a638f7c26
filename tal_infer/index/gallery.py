"""`GalleryIndex`: the persistent, incremental, crash-safe gallery (DESIGN.md Sec. 5).

An index folder holds ``index.sqlite`` (the catalog, `catalog.py`) and feature files
(`store.py`) in the dtype the index was made for (the bundle's precision: `ReIDEngine.open_index`
passes it). It is tied to one model by a fingerprint string (any string that changes whenever
the features would, e.g. a hash of the bundle's extractor and input size).

Crash safety (a SIGKILL at any point resumes to the result of a clean build):

- appending: feature rows are written past the committed row count and fsynced, then one
  SQLite transaction inserts their catalog rows and raises the count; a crash before the
  commit leaves bytes nobody references, cut off by the next append;
- a sync's removals and metadata updates are single transactions; replaced rows become dead
  space;
- compaction (when dead rows exceed half the live ones, or on request) writes a new feature
  generation in path order, commits the switch, then deletes the old one; leftovers of an
  interrupted compaction are deleted by the next writer;
- erasure (`remove`, `remove_where`, `drop_older_than`) is a compaction without the erased
  entries: their catalog rows leave in the same transaction as the switch, so a killed
  removal either did nothing or is complete; the old generation, the last file holding
  their features, is deleted right after the commit, or by the next writer of the index
  (every writer first deletes generations the catalog does not name). Catalog rows are
  deleted with SQLite's ``secure_delete`` (zeroed, not left in free pages);
- readers see one committed catalog snapshot and map exactly its rows; a writer never
  modifies committed bytes, so readers need no lock. One writer at a time (a lock file).

Integrity (a damaged index is never used silently): every open, load, sync and append first
checks the catalog (`catalog.problems`: SQLite's quick_check, tables, item rows distinct and
below the committed count) and that every feature file holds all committed rows
(`FeatureStore.check`); otherwise `IndexDamagedError` says what is wrong. A feature file is
never padded. ``rebuild=True`` starts a damaged or mismatched index over, but only in a folder
that holds nothing except index files (catalog, lock, ``features-<n>/*.f16`` or ``*.f32``);
any other file there means it is not (only) an index, and it is left untouched.

"Exactly a clean build" assumes ``extract_fn`` is deterministic per file (batch composition
differs after a resume; real backends can differ in the last bits between batch sizes).
Change detection: size and mtime first (as rsync and git do), the SHA-256 of the content
when they differ; a file rewritten with the same size within the same mtime tick is missed.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import DataError, TalError
from ..features import chunk_bounds
from ..hashing import file_sha256
from ..lifecycle import EntryFilter
from ..naming import parse_market_name
from . import catalog
from .catalog import IndexRecord
from .errors import GalleryIndexError, IndexDamagedError, IndexMismatchError, damaged
from .store import SUFFIXES, FeatureStore

try:
    import fcntl
except ImportError:  # not POSIX: single-writer use is then the caller's responsibility
    fcntl = None

ExtractFn = Callable[[list[str]], Mapping[str, np.ndarray]]
MetadataFn = Callable[[str], Mapping[str, Any]]
CATALOG = "index.sqlite"
_CATALOG_FILES = (CATALOG, CATALOG + "-journal", CATALOG + "-wal", CATALOG + "-shm")
_OWN_FILES = ("lock", *_CATALOG_FILES)
_DAMAGE_CODES = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_NOT_REBUILDING = "holds files that are not part of a gallery index; not rebuilding it"


@dataclass
class SyncReport:
    """What `GalleryIndex.sync` did: counts of files, and the (path, reason) it skipped."""
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RemovalReport:
    """What an erasure did: the paths removed, the entries left, and the bytes of the feature
    files before and after (they shrink by the removed rows, dead rows included)."""
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass(frozen=True)
class IndexContents:
    """A committed snapshot: records sorted by path, and their features without a copy.

    ``features[key]`` are read-only memory maps ``[stored rows, *shape]`` (the index's dtype)
    in storage order; ``rows[i]`` is the row of ``records[i]``. A `FeatureSource`
    (tal_infer.features): `iter_chunks` streams the gallery, `take` reads items by position.
    """
    records: list[IndexRecord]
    rows: np.ndarray
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    def chunk(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Features of ``records[start:stop]`` (a view when their rows are consecutive)."""
        rows = self.rows[start:stop]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            return {k: v[rows[0]:rows[-1] + 1] for k, v in self.features.items()}
        return {k: v[rows] for k, v in self.features.items()}

    def iter_chunks(self, size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """(start, stop, features) over all records in chunks of ``size``."""
        for start, stop in chunk_bounds(len(self), size):
            yield start, stop, self.chunk(start, stop)

    def take(self, columns: Sequence[int] | np.ndarray,
             keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Features of ``records[columns]`` (every key, or ``keys``; a copy, in memory, any
        order), reading only their rows of the feature files, in file order for locality
        (two-stage retrieval gathers its candidates so)."""
        rows = self.rows[np.asarray(columns, np.int64)]
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {k: np.asarray(self.features[k][rows[order]])[inverse]
                for k in (self.features if keys is None else keys)}


def market_metadata(path: str) -> dict[str, Any]:
    """Camera and identity label from a Market-1501-style file name; empty when it has none."""
    parsed = parse_market_name(Path(path).name)
    return {} if parsed is None else {"camera": parsed.camid, "label": parsed.pid}


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
        self._db = self.directory / CATALOG
        try:
            ready = self._snapshot(with_items=False) is not None
        except (IndexDamagedError, IndexMismatchError):
            if not rebuild:
                raise
            self._refuse_foreign_files(_NOT_REBUILDING)  # before the lock file is made
            ready = False
        if not ready:
            with self._writer():
                self._open_for_writing(rebuild)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "GalleryIndex":
        """An existing index for maintenance (erasure, retention, compaction, statistics),
        whatever model built it: fingerprint and shapes come from its own catalog."""
        if not (Path(directory) / CATALOG).is_file():
            raise GalleryIndexError(f"{directory}: not a gallery index (no {CATALOG})")
        with _connection(Path(directory)) as con:
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
             on_error: str = "fail", progress: bool = False) -> SyncReport:
        """Make the index hold exactly ``paths``: extract new and changed files, drop the rest.

        ``extract_fn(paths) -> {key: array [n, *shape]}`` sees only files to (re)extract, in
        batches of ``batch_size``; each batch is committed on its own, so an interrupted sync
        keeps its progress. ``metadata_fn(path)`` gives camera/timestamp/label (any other keys
        are kept as extra metadata). ``on_error="skip"``: files that cannot be read or
        extracted (a `TalError` or `OSError`) are left out and reported instead of failing.
        """
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        wanted = sorted(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths))
        report = SyncReport()
        with self._writer(), self._connect() as con:
            self._open_for_writing(rebuild=False)
            current = {rec.path: (rec, row) for rec, row in catalog.read_items(con)}
            gone = sorted(set(current) - set(wanted))
            with catalog.transaction(con):
                catalog.delete_items(con, gone)
            report.removed = len(gone)
            todo = self._refresh_known(con, wanted, current, metadata_fn, report, on_error)
            with tqdm(total=len(todo), desc="indexing gallery", unit="img",
                      disable=not progress) as bar:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start:start + batch_size]
                    self._add_batch(con, batch, extract_fn, metadata_fn, report, on_error,
                                    known=current)
                    bar.update(len(batch))
            info = catalog.parse_info(catalog.read_info(con))
            live = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            if info.rows - live > live // 2:
                self._rewrite(con)
        report.skipped.sort()
        return report

    def load(self) -> IndexContents:
        """The committed contents: records sorted by path, features memory-mapped."""
        snapshot = self._snapshot(with_items=True)
        if snapshot is None:
            raise GalleryIndexError(f"{self.directory}: index is empty (never initialized)")
        _, items, features = snapshot
        rows = np.array([row for _, row in items], dtype=np.int64)
        return IndexContents([rec for rec, _ in items], rows, features)

    def compact(self) -> None:
        """Rewrite the features densely in path order (dead rows dropped, chunks contiguous)."""
        with self._writer(), self._connect() as con:
            self._open_for_writing(rebuild=False)
            self._rewrite(con)

    def remove(self, paths: Iterable[str | os.PathLike]) -> RemovalReport:
        """Erase entries by path (their id in the index): catalog rows and feature rows leave
        the files (see the module doc). Unknown paths are ignored."""
        wanted = {os.path.abspath(os.fspath(p)) for p in paths}
        return self._erase(lambda rec: rec.path in wanted)

    def remove_where(self, entries: EntryFilter) -> RemovalReport:
        """Erase the entries a filter selects; its fields are ``camera``, ``label`` and the
        extra metadata keys, its ``before`` compares `entry_time`."""
        return self._erase(lambda rec: record_matches(entries, rec))

    def drop_older_than(self, cutoff: float) -> RemovalReport:
        """Retention: erase entries whose `entry_time` (seconds since the epoch) is before
        ``cutoff``."""
        return self.remove_where(EntryFilter(before=cutoff))

    def feature_bytes(self) -> int:
        """Bytes of every feature file in the folder (all generations present)."""
        return sum(f.stat().st_size for g in self.store.generations()
                   for f in self.store.folder(g).iterdir() if f.suffix in SUFFIXES.values())

    # -- internals ---------------------------------------------------------------------

    def _connect(self) -> contextlib.AbstractContextManager[Any]:
        return _connection(self.directory)

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """Exclusive writer lock; the folder is created (or vetted) first."""
        try:
            self._prepare_folder()
            lock = open(self.directory / "lock", "ab")
        except OSError as err:
            raise GalleryIndexError(f"{self.directory}: cannot write the index there "
                                    f"({err.strerror or err})") from None
        with lock:
            if fcntl is not None:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise GalleryIndexError(f"{self.directory}: the index is being updated by "
                                            "another process") from None
            yield

    def _prepare_folder(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise GalleryIndexError(f"{self.directory}: not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._db.exists():
            self._refuse_foreign_files(f"not a gallery index (no {CATALOG}) and not empty; "
                                       "choose an empty or new folder")

    def _refuse_foreign_files(self, why: str) -> None:
        """Raise unless the folder holds only index files (so emptying it loses nothing)."""
        foreign = sorted(p.name for p in self.directory.iterdir()
                         if p.name not in _OWN_FILES and not self.store.is_own_entry(p))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise GalleryIndexError(f"{self.directory}: {why} (it holds {shown})")

    def _snapshot(self, with_items: bool
                  ) -> tuple[catalog.Info, list, dict[str, np.ndarray]] | None:
        """(info, items, feature maps) of the committed state, checked against this model and
        the feature files; None for a catalog that was never initialized (or no catalog)."""
        missing_in = None
        for _ in range(3):  # a compaction may retire the mapped generation meanwhile
            if not self._db.exists():
                return None
            with self._connect() as con:
                con.execute("BEGIN")
                raw = catalog.read_info(con)
                if not raw:
                    self._refuse_foreign_tables(con)
                    return None
                info = self._checked(raw)
                problem = catalog.problems(con, info)
                if problem:
                    raise damaged(self.directory, problem)
                items = catalog.read_items(con) if with_items else []
                con.execute("COMMIT")
            try:
                return info, items, self.store.open(info.generation, info.rows)
            except FileNotFoundError:
                if missing_in == info.generation:  # not retired: the catalog still names it
                    self.store.check(info.generation, info.rows)
                missing_in = info.generation
        raise GalleryIndexError(f"{self.directory}: the index kept changing while loading; "
                                "try again")

    def _refuse_foreign_tables(self, con: Any) -> None:
        """An SQLite file of another program is not ours to initialize."""
        if catalog.tables(con) - catalog.TABLES:
            raise GalleryIndexError(f"{self._db}: an SQLite database that is not a gallery "
                                    "index catalog; choose another folder")

    def _checked(self, raw: dict[str, str]) -> catalog.Info:
        """Parse the info table; raise unless it is this format, fingerprint and shapes."""
        if raw.get("format_version") != str(catalog.FORMAT_VERSION):
            raise IndexMismatchError(f"{self.directory}: index format version "
                                     f"{raw.get('format_version')} is not supported (this "
                                     f"toolkit reads version {catalog.FORMAT_VERSION}); rebuild it")
        try:
            info = catalog.parse_info(raw)
        except ValueError as err:
            raise damaged(self.directory, str(err)) from None
        if info.fingerprint != self.fingerprint:
            raise IndexMismatchError(f"{self.directory}: index was built for model "
                                     f"{info.fingerprint!r}, not {self.fingerprint!r}; rebuild "
                                     "it or choose another index folder")
        if info.shapes != self.store.shapes:
            raise IndexMismatchError(f"{self.directory}: index holds features {info.shapes}, "
                                     f"the model gives {self.store.shapes}; rebuild it")
        if info.dtype != self.store.dtype_name:
            raise IndexMismatchError(f"{self.directory}: index stores {info.dtype} features, "
                                     f"the model gives {self.store.dtype_name}; rebuild it")
        return info

    def _erase(self, select: Callable[[IndexRecord], bool]) -> RemovalReport:
        """Rewrite the index without the entries ``select`` picks (one commit; module doc)."""
        report = RemovalReport()
        with self._writer(), self._connect() as con:
            self._open_for_writing(rebuild=False)
            report.bytes_before = self.feature_bytes()
            items = catalog.read_items(con)
            report.removed = [rec.path for rec, _ in items if select(rec)]
            report.kept = len(items) - len(report.removed)
            if report.removed:
                self._rewrite(con, set(report.removed))
            report.bytes_after = self.feature_bytes()
        return report

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
            self._refuse_foreign_files(_NOT_REBUILDING)
            generation = max(self.store.generations(), default=-1) + 1
            for name in _CATALOG_FILES:  # the catalog first: features alone are no index
                (self.directory / name).unlink(missing_ok=True)
            self.store.remove_other_generations(None)
            return self._initialize(generation)
        if snapshot is None:
            return self._initialize(max(self.store.generations(), default=-1) + 1)
        self.store.remove_other_generations(snapshot[0].generation)
        return snapshot[0]

    def _initialize(self, generation: int) -> catalog.Info:
        """An empty catalog for this model whose features live in ``generation``."""
        with self._connect() as con, catalog.transaction(con):
            catalog.initialize(con, self.fingerprint, self.store.shapes, generation,
                               self.store.dtype_name)
        self.store.remove_other_generations(generation)
        return catalog.Info(self.fingerprint, self.store.shapes, generation, 0,
                            self.store.dtype_name)

    def _refresh_known(self, con: Any, wanted: list[str], current: dict, metadata_fn,
                       report: SyncReport, on_error: str) -> list[str]:
        """Update metadata of unchanged files in one transaction; return files to extract."""
        todo, refreshed, unreadable = [], [], []
        for path in wanted:
            if path not in current:
                todo.append(path)
                continue
            old, row = current[path]
            try:
                st = os.stat(path)
                same = (st.st_size, st.st_mtime_ns) == (old.size, old.mtime_ns)
                digest = old.sha256 if same else file_sha256(path)
            except OSError as err:
                _skip_or_raise(report, on_error, path, err)
                unreadable.append(path)  # as in a clean build, it is not in the index
                continue
            if digest != old.sha256:
                todo.append(path)
                continue
            new = _record(path, st, digest, metadata_fn)
            if new != old:
                refreshed.append((new, row))
            report.unchanged += 1
        with catalog.transaction(con):
            catalog.delete_items(con, unreadable)
            catalog.put_items(con, refreshed)
        return todo

    def _add_batch(self, con: Any, batch: list[str], extract_fn: ExtractFn, metadata_fn,
                   report: SyncReport, on_error: str, known: Mapping[str, Any]) -> None:
        """Extract one batch and commit it; known files that failed leave the index."""
        records = []
        for path in batch:
            try:
                records.append(_record(path, os.stat(path), file_sha256(path), metadata_fn))
            except OSError as err:
                _skip_or_raise(report, on_error, path, err)
        records, arrays = self._extract(records, extract_fn, report, on_error)
        info = catalog.parse_info(catalog.read_info(con))
        if records:
            try:
                self.store.append(info.generation, info.rows, arrays)
            except OSError as err:  # disk full, folder gone: the catalog is still consistent
                raise GalleryIndexError(f"{self.directory}: cannot write features "
                                        f"({err.strerror or err})") from None
        done = {r.path for r in records}
        with catalog.transaction(con):
            catalog.delete_items(con, [p for p in batch if p in known and p not in done])
            catalog.put_items(con, [(r, info.rows + i) for i, r in enumerate(records)])
            catalog.write_info(con, rows=info.rows + len(records))
        report.updated += sum(p in known for p in done)
        report.added += sum(p not in known for p in done)

    def _extract(self, records: list[IndexRecord], extract_fn: ExtractFn, report: SyncReport,
                 on_error: str) -> tuple[list[IndexRecord], dict[str, np.ndarray]]:
        """Features of a batch; with on_error="skip", a failing batch is retried per file."""
        if not records:
            return [], {}
        try:
            features = extract_fn([r.path for r in records])
        except (TalError, OSError) as err:
            if on_error == "fail":
                raise
            if len(records) == 1:
                report.skipped.append((records[0].path, getattr(err, "problem", str(err))))
                return [], {}
        else:
            return records, self._checked_features(features, len(records))
        kept, parts = [], []
        for rec in records:
            one, arrays = self._extract([rec], extract_fn, report, on_error)
            if one:
                kept.append(rec)
                parts.append(arrays)
        if not kept:
            return [], {}
        return kept, {k: np.concatenate([p[k] for p in parts]) for k in self.store.shapes}

    def _checked_features(self, arrays: Mapping[str, np.ndarray], n: int) -> dict:
        if set(arrays) != set(self.store.shapes):
            raise ValueError(f"extract_fn returned keys {sorted(arrays)}, the index expects "
                             f"{sorted(self.store.shapes)}")
        out = {}
        for key, shape in self.store.shapes.items():
            array = np.asarray(arrays[key], dtype=self.store.dtype)
            if array.shape != (n, *shape):
                raise ValueError(f"extract_fn returned {key} of shape {array.shape}, expected "
                                 f"{(n, *shape)}")
            if not np.isfinite(array).all():
                raise ValueError(f"extract_fn returned non-finite values in {key}")
            out[key] = array
        return out

    def _rewrite(self, con: Any, erase: set[str] = frozenset()) -> None:
        """Compaction: the live rows except those of ``erase`` densely in path order as a new
        generation, then one commit that drops ``erase`` from the catalog and switches to it,
        then the old generation is deleted."""
        info = catalog.parse_info(catalog.read_info(con))
        items = [(rec, row) for rec, row in catalog.read_items(con) if rec.path not in erase]
        generation = info.generation + 1
        order = np.array([row for _, row in items], dtype=np.int64)
        self.store.write_generation(generation, self.store.open(info.generation, info.rows),
                                    order)
        with catalog.transaction(con):
            catalog.delete_items(con, sorted(erase))
            catalog.set_rows(con, [(rec.path, i) for i, (rec, _) in enumerate(items)])
            catalog.write_info(con, generation=generation, rows=len(items))
        self.store.remove_other_generations(generation)


@contextlib.contextmanager
def _connection(directory: Path) -> Iterator[Any]:
    """A connection to the catalog of ``directory``; SQLite failures (damaged file, locked)
    become one line."""
    db = directory / CATALOG
    try:
        con = catalog.connect(db)
        try:
            yield con
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        if str(getattr(err, "sqlite_errorname", "")).startswith(_DAMAGE_CODES):
            raise damaged(directory, f"cannot use the index catalog {CATALOG} ({err})") from None
        raise GalleryIndexError(f"{db}: cannot use the index catalog ({err})") from None


def entry_time(record: IndexRecord) -> float:
    """When an entry was seen, in seconds since the epoch: its timestamp, or (without one, as
    for crops synced from a folder) its file's modification time."""
    return record.timestamp if record.timestamp is not None else record.mtime_ns / 1e9


def record_matches(entries: EntryFilter, record: IndexRecord) -> bool:
    """Whether a filter selects an entry: its fields are compared with the record's camera and
    label (where known) and extra metadata, its ``before`` with `entry_time`."""
    fields = dict(record.extra)
    fields.update({k: v for k, v in (("camera", record.camera), ("label", record.label))
                   if v is not None})
    return entries.matches(fields, entry_time(record))


def _record(path: str, st: os.stat_result, digest: str, metadata_fn: MetadataFn) -> IndexRecord:
    meta = dict(metadata_fn(path))
    camera = meta.pop("camera", None)
    timestamp = meta.pop("timestamp", None)
    label = meta.pop("label", None)
    return IndexRecord(
        path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest,
        camera=None if camera is None else int(camera),
        timestamp=None if timestamp is None else float(timestamp),
        label=label.item() if hasattr(label, "item") else label,
        extra=catalog.decode_extra(catalog.encode_extra(meta)))




def _skip_or_raise(report: SyncReport, on_error: str, path: str, err: OSError) -> None:
    """An unreadable file: one-line `DataError` naming it, or a skipped entry."""
    reason = f"cannot be read ({err.strerror or err})"
    if on_error == "fail":
        raise DataError(f"{path}: {reason}") from None
    report.skipped.append((path, reason))
