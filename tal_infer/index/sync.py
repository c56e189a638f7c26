"""Syncing an index with a list of gallery files: only new and changed files are extracted.

Change detection: size and mtime first (as rsync and git do), the SHA-256 of the content when
they differ; a file rewritten with the same size within the same mtime tick is missed.
Removals and metadata updates of unchanged files are one transaction each; new features are
appended batch by batch, each batch made durable and then committed (so an interrupted sync
keeps its progress). With ``on_error="skip"``, files that cannot be read or extracted are left
out and reported; a failing batch is retried file by file to find them.
"""
from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import DataError, TalError
from ..console import progress
from ..hashing import file_sha256
from ..images import MAX_IMAGE_BYTES
from ..naming import parse_market_name
from ..user_files import check_regular
from . import catalog
from .catalog import IndexRecord
from .store import FeatureStore

ExtractFn = Callable[[list[str]], Mapping[str, np.ndarray]]
_INTEGER_MAX = 2**63 - 1  # SQLite's INTEGER
MetadataFn = Callable[[str], Mapping[str, Any]]


@dataclass
class SyncReport:
    """What `GalleryIndex.sync` did: counts of files, and the (path, reason) it skipped."""
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def market_metadata(path: str) -> dict[str, Any]:
    """Camera (as the name numbers it: ``c3`` is 3) and identity label from a Market-1501-style
    file name; empty when it has none; `BadNameError` for numbers out of range."""
    parsed = parse_market_name(Path(path).name)
    return {} if parsed is None else {"camera": parsed.camera, "label": parsed.pid}


class Sync:
    """One sync of an index's feature store with gallery files (see the module doc)."""

    def __init__(self, store: FeatureStore, extract_fn: ExtractFn, metadata_fn: MetadataFn,
                 on_error: str):
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.store = store
        self.extract_fn, self.metadata_fn, self.on_error = extract_fn, metadata_fn, on_error
        self.report = SyncReport()

    def run(self, con: sqlite3.Connection, wanted: list[str], batch_size: int) -> SyncReport:
        """Make the catalog ``con`` (open under the writer lock) hold exactly ``wanted``
        (absolute paths, sorted, distinct)."""
        self.con = con
        current = {rec.path: (rec, row) for rec, row in catalog.read_items(self.con)}
        gone = sorted(set(current) - set(wanted))
        with catalog.transaction(self.con):
            catalog.delete_items(self.con, gone)
        self.report.removed = len(gone)
        todo = self._refresh_known(wanted, current)
        with progress(total=len(todo), desc="indexing gallery", unit="img") as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                self._add_batch(batch, known=current)
                bar.update(len(batch))
        self.report.skipped.sort()
        return self.report

    def _refresh_known(self, wanted: list[str], current: dict) -> list[str]:
        """Update metadata of known files in one transaction (which marks the catalog's
        cameras as numbered by this version); return files to extract."""
        todo, refreshed, unreadable = [], [], []
        for path in wanted:
            if path not in current:
                todo.append(path)
                continue
            old, row = current[path]
            new = self._record(path, old)
            if new is None:
                unreadable.append(path)  # as in a clean build, it is not in the index
                continue
            if new.sha256 != old.sha256:
                todo.append(path)  # re-extracted below; until then its old row, new metadata
                new = old._replace(camera=new.camera, timestamp=new.timestamp,
                                   label=new.label, extra=new.extra)
            else:
                self.report.unchanged += 1
            if new != old:
                refreshed.append((new, row))
        with catalog.transaction(self.con):
            catalog.delete_items(self.con, unreadable)
            catalog.put_items(self.con, refreshed)
            catalog.write_info(self.con, camera_numbering=catalog.CAMERAS_AS_NAMED)
        return todo

    def _add_batch(self, batch: list[str], known: Mapping[str, Any]) -> None:
        """Extract one batch and commit it; known files that failed leave the index."""
        records = [r for r in map(self._record, batch) if r is not None]
        records, arrays = self._extract(records)
        info = catalog.parse_info(catalog.read_info(self.con))
        if records:
            self.store.append(info.generation, info.rows, arrays)
        done = {r.path for r in records}
        with catalog.transaction(self.con):
            catalog.delete_items(self.con, [p for p in batch if p in known and p not in done])
            catalog.put_items(self.con, [(r, info.rows + i) for i, r in enumerate(records)])
            catalog.write_info(self.con, rows=info.rows + len(records))
        self.report.updated += sum(p in known for p in done)
        self.report.added += sum(p not in known for p in done)

    def _record(self, path: str, known: IndexRecord | None = None) -> IndexRecord | None:
        """The record of a gallery file as it is now: size, mtime, content hash (``known``'s
        when size and mtime are unchanged), metadata. A file that is not a readable regular
        file, or whose metadata fails (a bad name), is skipped (None) or refused."""
        try:
            st = check_regular(path)  # a FIFO would block the hash for ever
            same = known is not None and (st.st_size, st.st_mtime_ns) == (known.size,
                                                                           known.mtime_ns)
            # capped: a file too big to be an image is skipped unread, not hashed for minutes
            digest = known.sha256 if same else file_sha256(path, MAX_IMAGE_BYTES)
            return _record(path, st, digest, dict(self.metadata_fn(path)))
        except TalError as err:  # first: a UserFileError is an OSError too, with its reason
            self._skip_or_raise(path, getattr(err, "problem", str(err)))
        except OSError as err:
            self._skip_or_raise(path, f"cannot be read ({err.strerror or err})")
        return None

    def _extract(self, records: list[IndexRecord]
                 ) -> tuple[list[IndexRecord], dict[str, np.ndarray]]:
        """Features of a batch; with on_error="skip", a failing batch is retried per file."""
        if not records:
            return [], {}
        try:
            features = self.extract_fn([r.path for r in records])
        except (TalError, OSError) as err:
            if self.on_error == "fail":
                raise
            if len(records) == 1:
                self.report.skipped.append((records[0].path, getattr(err, "problem", str(err))))
                return [], {}
        else:
            return records, self._checked_features(features, len(records))
        kept, parts = [], []
        for rec in records:
            one, arrays = self._extract([rec])
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

    def _skip_or_raise(self, path: str, reason: str) -> None:
        """A file that cannot be indexed: one-line `DataError` naming it, or a skipped entry."""
        if self.on_error == "fail":
            raise DataError(f"{path}: {reason}") from None
        self.report.skipped.append((path, reason))


def _record(path: str, st: os.stat_result, digest: str, meta: dict[str, Any]) -> IndexRecord:
    """The catalog record; `DataError` for metadata the catalog cannot hold as given."""
    camera = meta.pop("camera", None)
    timestamp = meta.pop("timestamp", None)
    label = meta.pop("label", None)
    label = label.item() if hasattr(label, "item") else label
    try:
        camera = None if camera is None else int(camera)
        timestamp = None if timestamp is None else float(timestamp)
    except (TypeError, ValueError):
        raise DataError(f"bad metadata: camera {camera!r} must be a whole number, timestamp "
                        f"{timestamp!r} a number") from None
    for what, value in (("camera", camera), ("label", label)):
        if isinstance(value, int) and abs(value) > _INTEGER_MAX:
            raise DataError(f"bad metadata: {what} {value} does not fit a 64-bit integer")
    if timestamp is not None and not math.isfinite(timestamp):
        raise DataError(f"bad metadata: timestamp {timestamp} is not a finite time")
    return IndexRecord(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest,
                       camera=camera, timestamp=timestamp, label=label,
                       extra=catalog.decode_extra(catalog.encode_extra(meta)))
