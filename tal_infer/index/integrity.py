"""Reading an index's committed state, checked (a damaged index is never used silently).

Every open, load, sync, compaction and erasure starts here: the catalog is this format, of this
model (fingerprint, feature shapes, dtype), and passes `catalog.problems` (SQLite's
quick_check, tables, item rows distinct and below the committed count); every feature file
holds the committed rows (`FeatureStore.check`). Otherwise `IndexMismatchError` or
`IndexDamagedError` says what is wrong in one line.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import catalog
from .catalog import IndexRecord
from .errors import GalleryIndexError, IndexMismatchError, damaged
from .folder import IndexFolder
from .store import FeatureStore


class Snapshot(NamedTuple):
    """The committed state: catalog info, (record, feature row) items, feature maps."""
    info: catalog.Info
    items: list[tuple[IndexRecord, int]]
    features: dict[str, np.ndarray]


def read_snapshot(folder: IndexFolder, fingerprint: str, store: FeatureStore,
                  with_items: bool) -> Snapshot | None:
    """The committed state, checked against this model and the feature files (items only
    ``with_items``); None for a catalog that was never initialized (or no catalog)."""
    missing_in = None
    for _ in range(3):  # a compaction may retire the mapped generation meanwhile
        if not folder.catalog.exists():
            return None
        with folder.connect() as con:
            con.execute("BEGIN")
            raw = catalog.read_info(con)
            if not raw:
                folder.refuse_foreign_tables(con)
                return None
            info = checked_info(raw, folder, fingerprint, store)
            problem = catalog.problems(con, info)
            if problem:
                raise damaged(folder.path, problem)
            items = catalog.read_items(con) if with_items else []
            con.execute("COMMIT")
        try:
            return Snapshot(info, items, store.open(info.generation, info.rows))
        except FileNotFoundError:
            if missing_in == info.generation:  # not retired: the catalog still names it
                store.check(info.generation, info.rows)
            missing_in = info.generation
    raise GalleryIndexError(f"{folder.path}: the index kept changing while loading; "
                            "try again")


def checked_info(raw: dict[str, str], folder: IndexFolder, fingerprint: str,
                 store: FeatureStore) -> catalog.Info:
    """Parse the info table; raise unless it is this format, fingerprint, shapes and dtype."""
    where = folder.path
    if raw.get("format_version") != str(catalog.FORMAT_VERSION):
        raise IndexMismatchError(f"{where}: index format version "
                                 f"{raw.get('format_version')} is not supported (this "
                                 f"toolkit reads version {catalog.FORMAT_VERSION}); rebuild it")
    try:
        info = catalog.parse_info(raw)
    except ValueError as err:
        raise damaged(where, str(err)) from None
    if info.fingerprint != fingerprint:
        raise IndexMismatchError(f"{where}: index was built for model {info.fingerprint!r}, "
                                 f"not {fingerprint!r}; rebuild it or choose another index "
                                 "folder")
    if info.shapes != store.shapes:
        raise IndexMismatchError(f"{where}: index holds features {info.shapes}, the model "
                                 f"gives {store.shapes}; rebuild it")
    if info.dtype != store.dtype_name:
        raise IndexMismatchError(f"{where}: index stores {info.dtype} features, the model "
                                 f"gives {store.dtype_name}; rebuild it")
    return info
