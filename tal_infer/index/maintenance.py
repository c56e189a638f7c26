"""Compaction and erasure: rewriting the feature files as a new generation.

Compaction (when dead rows exceed half the live ones, or on request) writes the live rows
densely in path order as a new generation, commits the switch, then deletes the old one.
Erasure (`GalleryIndex.remove`, `remove_where`, `drop_older_than`) is a compaction without the
erased entries: their catalog rows leave in the same transaction as the switch, so a killed
removal either did nothing or is complete; the old generation, the last file holding their
features, is deleted right after the commit, or by the next writer (every writer first deletes
generations the catalog does not name). Catalog rows are deleted with SQLite's
``secure_delete`` (zeroed, not left in free pages).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..lifecycle import EntryFilter
from . import catalog
from .catalog import IndexRecord
from .errors import GalleryIndexError
from .store import FeatureStore


@dataclass
class RemovalReport:
    """What an erasure did: the paths removed, the entries left, and the bytes of the feature
    files before and after (they shrink by the removed rows, dead rows included)."""
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


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


def selected(entries: EntryFilter, info: catalog.Info,
             records: list[IndexRecord]) -> list[IndexRecord]:
    """The records a filter selects; a key none of them has is refused (`require_keys`), and
    so is a camera filter on a catalog that numbers cameras from 0 (written before cameras
    were numbered as the file names do): ``camera=3`` would select the crops named ``c4``."""
    if "camera" in entries.fields and info.camera_numbering != catalog.CAMERAS_AS_NAMED:
        raise GalleryIndexError(
            f"the index numbers cameras from 0 (c1 = 0; written by an earlier version), so "
            f"camera={entries.fields['camera']} would not mean c{entries.fields['camera']}; "
            "sync it once (tal-infer --index, or GalleryIndex.sync) to number its cameras as "
            "the file names do, then filter by camera")
    entries.require_keys({"camera", "label"}.union(*(rec.extra for rec in records)))
    return [rec for rec in records if record_matches(entries, rec)]


def compact_if_sparse(con: sqlite3.Connection, store: FeatureStore) -> None:
    """Compact when the dead rows (replaced or vanished files) exceed half the live ones."""
    info = catalog.parse_info(catalog.read_info(con))
    live = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    if info.rows - live > live // 2:
        rewrite(con, store)


def erase(con: sqlite3.Connection, store: FeatureStore,
          select: Callable[[IndexRecord], bool]) -> RemovalReport:
    """Rewrite the index without the entries ``select`` picks (one commit; module doc)."""
    report = RemovalReport(bytes_before=store.total_bytes())
    items = catalog.read_items(con)
    report.removed = [rec.path for rec, _ in items if select(rec)]
    report.kept = len(items) - len(report.removed)
    if report.removed:
        rewrite(con, store, set(report.removed))
    report.bytes_after = store.total_bytes()
    return report


def rewrite(con: sqlite3.Connection, store: FeatureStore,
            dropped: set[str] = frozenset()) -> None:
    """Compaction: the live rows except those of ``dropped`` densely in path order as a new
    generation, then one commit that drops ``dropped`` from the catalog and switches to it,
    then the old generation is deleted."""
    info = catalog.parse_info(catalog.read_info(con))
    items = [(rec, row) for rec, row in catalog.read_items(con) if rec.path not in dropped]
    generation = info.generation + 1
    order = np.array([row for _, row in items], dtype=np.int64)
    store.write_generation(generation, store.open(info.generation, info.rows), order)
    with catalog.transaction(con):
        catalog.delete_items(con, sorted(dropped))
        catalog.set_rows(con, [(rec.path, i) for i, (rec, _) in enumerate(items)])
        catalog.write_info(con, generation=generation, rows=len(items))
    store.remove_other_generations(generation)
