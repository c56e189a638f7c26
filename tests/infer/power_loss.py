"""What a power loss would lose: the fsyncs and catalog commits of an index writer, in order.

A SIGKILL (the crash tests) keeps the page cache, so it cannot see a missing fsync; a power
loss keeps only what was fsynced. `DurabilityLog.install` wraps the store's `_fsync` (the one
durability point of feature files and folders), recording what each call made durable: a
file's inode, size and mtime; a folder's entries (name, inode). It also wraps
`catalog.transaction`: just before each COMMIT that names new feature rows (another generation
or row count than before the transaction), it checks that

- every feature file of that generation was fsynced after its last change (size and mtime as
  at its last fsync) and holds the committed rows;
- the generation folder was fsynced while it held each of those files (their directory
  entries are durable), and the index folder while it held the generation folder.

Each failure is a line in `violations`; `checked` counts the commits checked.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from tal_infer.index import catalog, store


class DurabilityLog:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.durable: dict[tuple[int, int], tuple[int, int]] = {}  # file -> (size, mtime_ns)
        self.listed: dict[tuple[int, int], list[set]] = {}  # folder -> entries at each fsync
        self.violations: list[str] = []
        self.checked = 0

    def install(self, monkeypatch) -> None:
        real_fsync, real_transaction = store._fsync, catalog.transaction

        def fsync(fd: int) -> None:
            real_fsync(fd)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(fd) as entries:
                    names = {(e.name, e.inode()) for e in entries}
                self.listed.setdefault((st.st_dev, st.st_ino), []).append(names)
            else:
                self.durable[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns)

        @contextlib.contextmanager
        def transaction(con):
            with real_transaction(con):
                before = _rows_named(con)
                yield con
                after = _rows_named(con)
                if after is not None and after[1] > 0 and after != before:
                    self._check(catalog.parse_info(catalog.read_info(con)))
                    self.checked += 1

        monkeypatch.setattr(store, "_fsync", fsync)
        monkeypatch.setattr(catalog, "transaction", transaction)

    def _check(self, info: catalog.Info) -> None:
        features = store.FeatureStore(self.root, info.shapes, info.dtype)
        folder = features.folder(info.generation)
        commit = f"commit of generation {info.generation}, {info.rows} rows"
        for key, row_bytes in features.row_bytes.items():
            path = features.file(info.generation, key)
            st = path.stat()
            synced = self.durable.get((st.st_dev, st.st_ino))
            if synced != (st.st_size, st.st_mtime_ns):
                self.violations.append(f"{commit}: {path.name} changed since its last fsync "
                                       f"({synced} -> {(st.st_size, st.st_mtime_ns)})")
            elif st.st_size < info.rows * row_bytes:
                self.violations.append(f"{commit}: {path.name} holds fewer rows")
            if not self._entry_durable(folder, path):
                self.violations.append(f"{commit}: {folder.name} was not fsynced while it held "
                                       f"{path.name}")
        if not self._entry_durable(self.root, folder):
            self.violations.append(f"{commit}: the index folder was not fsynced while it held "
                                   f"{folder.name}")

    def _entry_durable(self, folder: Path, entry: Path) -> bool:
        st = folder.stat()
        wanted = (entry.name, entry.stat().st_ino)
        return any(wanted in names for names in self.listed.get((st.st_dev, st.st_ino), []))


def _rows_named(con) -> tuple[int, int] | None:
    """(generation, committed rows) the catalog names, as this transaction sees it; None for a
    catalog not initialized yet."""
    raw = catalog.read_info(con)
    return (int(raw["generation"]), int(raw["rows"])) if "rows" in raw else None
