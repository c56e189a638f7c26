"""The index folder: what may be in it, who may write it, and how its catalog is opened.

- Vetting: a new index gets a new or empty folder; a folder without a catalog that holds
  anything is refused, and starting a damaged index over (``rebuild``) empties a folder only
  when it holds nothing but index files (catalog, journal, lock, ``features-<n>/`` folders of
  feature files), so no other file is ever deleted.
- Writer lock: one writer at a time (``flock`` on ``lock``); readers need no lock, since a
  writer never modifies committed bytes.
- Catalog connections: SQLite failures become one line (damage, a full disk, or an unusable
  file). Catalog, lock and feature files must be regular files: a FIFO would block SQLite or
  the lock for ever.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from . import catalog
from .errors import GalleryIndexError, damaged, no_space
from ..user_files import UserFileError, check_regular
from .store import is_generation_folder

try:
    import fcntl
except ImportError:  # not POSIX: single-writer use is then the caller's responsibility
    fcntl = None

CATALOG = "index.sqlite"
CATALOG_FILES = (CATALOG, CATALOG + "-journal", CATALOG + "-wal", CATALOG + "-shm")
_OWN_FILES = ("lock", *CATALOG_FILES)
_DAMAGE_CODES = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


class IndexFolder:
    """The folder of one gallery index (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.catalog = self.path / CATALOG

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to the catalog; SQLite failures (damaged file, locked) become one
        line."""
        if os.path.lexists(self.catalog):  # SQLite would block on a FIFO for ever
            try:
                check_regular(self.catalog)
            except UserFileError as err:
                raise damaged(self.path, f"{CATALOG} {err.problem}") from None
        try:
            con = catalog.connect(self.catalog)
            try:
                yield con
            finally:
                con.close()
        except sqlite3.DatabaseError as err:
            code = str(getattr(err, "sqlite_errorname", ""))
            if code == "SQLITE_FULL":
                raise no_space(self.path, "the catalog") from None
            if code.startswith(_DAMAGE_CODES):
                raise damaged(self.path, f"cannot use the index catalog {CATALOG} "
                                         f"({err})") from None
            raise GalleryIndexError(f"{self.catalog}: cannot use the index catalog "
                                    f"({err})") from None

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Exclusive writer lock; the folder is created (or vetted) first."""
        try:
            self._prepare()
            lock_file = self.path / "lock"
            if os.path.lexists(lock_file):  # opening a FIFO to write blocks for ever
                check_regular(lock_file)
            lock = open(lock_file, "ab")
        except UserFileError as err:
            raise GalleryIndexError(str(err)) from None
        except OSError as err:
            raise GalleryIndexError(f"{self.path}: cannot write the index there "
                                    f"({err.strerror or err})") from None
        with lock:
            if fcntl is not None:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise GalleryIndexError(f"{self.path}: the index is being updated by "
                                            "another process") from None
            yield

    def refuse_foreign_files(self, why: str) -> None:
        """Raise unless the folder holds only index files (so emptying it loses nothing)."""
        foreign = sorted(p.name for p in self.path.iterdir()
                         if p.name not in _OWN_FILES and not is_generation_folder(p))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise GalleryIndexError(f"{self.path}: {why} (it holds {shown})")

    def refuse_foreign_tables(self, con: sqlite3.Connection) -> None:
        """An SQLite file of another program is not ours to initialize."""
        if catalog.tables(con) - catalog.TABLES:
            raise GalleryIndexError(f"{self.catalog}: an SQLite database that is not a gallery "
                                    "index catalog; choose another folder")

    def delete_catalog(self) -> None:
        """Delete the catalog and its journal files (the first step of starting over: feature
        files alone are no index)."""
        for name in CATALOG_FILES:
            (self.path / name).unlink(missing_ok=True)

    def _prepare(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise GalleryIndexError(f"{self.path}: not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.catalog.exists():
            self.refuse_foreign_files(f"not a gallery index (no {CATALOG}) and not empty; "
                                      "choose an empty or new folder")
