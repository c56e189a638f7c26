"""Feature rows on disk: one raw file per feature key, one folder per generation.

``<index>/features-<generation>/<key>.f16`` (``.f32``) holds rows ``[rows, *item_shape]`` in C
order, little-endian float16 (float32), no header; the catalog records dtype, shapes, row count
and generation. The dtype is the bundle's precision (`tal_infer.precision`): features are
stored as the extractor gives them.
Rows are only appended; bytes past the catalog's committed row count are leftovers of an
interrupted write and are cut off before the next append. Compaction writes a whole new
generation beside the old one; the catalog commit that names it is the switch.

A file shorter than the committed rows is damage (a committed byte is never removed while its
generation is live): opening and appending refuse it with `IndexDamagedError` instead of
reading past the end or padding the gap with zeros.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from ..user_files import UserFileError, check_regular
from .errors import damaged, write_error

# The feature dtypes an index stores, with their files' suffix.
SUFFIXES = {"float16": ".f16", "float32": ".f32"}
_GENERATION = re.compile(r"^features-(\d+)$")
_COPY_ROWS = 1024  # rows gathered at once while compacting


def _fsync(fd: int) -> None:
    """The single durability point for files and folders (crash tests hook it)."""
    os.fsync(fd)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class FeatureStore:
    """The feature files of an index folder, for a fixed set of keys, item shapes and dtype
    (a key of `SUFFIXES`)."""

    def __init__(self, root: Path, shapes: Mapping[str, tuple[int, ...]],
                 dtype: str = "float16"):
        self.root = root
        self.shapes = {key: tuple(int(d) for d in shape) for key, shape in shapes.items()}
        self.dtype_name = dtype
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.row_bytes = {key: int(np.prod(shape)) * self.dtype.itemsize
                          for key, shape in self.shapes.items()}

    def folder(self, generation: int) -> Path:
        return self.root / f"features-{generation}"

    def file(self, generation: int, key: str) -> Path:
        return self.folder(generation) / f"{key}{SUFFIXES[self.dtype_name]}"

    def check(self, generation: int, rows: int) -> None:
        """Raise `IndexDamagedError` unless every feature file is a regular file holding the
        ``rows`` committed rows (a missing file holds none; bytes past them are an interrupted
        write's)."""
        for key, row_bytes in self.row_bytes.items():
            path = self.file(generation, key)
            size = self._size(path)
            if rows and (size is None or size < rows * row_bytes):
                held = "is missing" if size is None else f"holds {size // row_bytes} of them"
                raise damaged(self.root, f"the catalog commits {rows} feature rows, "
                                         f"{path.relative_to(self.root)} {held}")

    def _size(self, path: Path) -> int | None:
        """The size of a feature file, None when there is none; `IndexDamagedError` when it is
        not a regular file (a FIFO would block a read, a device never end it)."""
        if not os.path.lexists(path):
            return None
        try:
            return check_regular(path).st_size
        except UserFileError as err:
            raise damaged(self.root, f"{path.relative_to(self.root)} {err.problem}") from None

    def append(self, generation: int, committed: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Durably write ``arrays`` as rows ``committed..``; visible once the catalog commits.
        A failed write (a full disk) is cut off again, giving its space back, and raised as
        one line (`write_error`)."""
        self.check(generation, committed)
        folder = self.folder(generation)
        try:
            if not folder.is_dir():
                folder.mkdir()
                _sync_folder(self.root)
            for key, array in arrays.items():
                with open(self.file(generation, key), "ab+") as f:
                    f.truncate(committed * self.row_bytes[key])  # an interrupted write (only)
                    f.seek(0, os.SEEK_END)
                    f.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
                    f.flush()
                    _fsync(f.fileno())
            _sync_folder(folder)
        except OSError as err:
            self._cut_to(generation, committed)
            raise write_error(self.root, "feature files", err) from None

    def open(self, generation: int, rows: int) -> dict[str, np.ndarray]:
        """Read-only memory maps ``[rows, *shape]`` of the committed rows (no copy).

        Raises `FileNotFoundError` for a missing file (a compaction may just have retired the
        generation: the caller decides) and `IndexDamagedError` for a short one.
        """
        for key in self.shapes:
            if rows and not os.path.lexists(self.file(generation, key)):
                raise FileNotFoundError(self.file(generation, key))
        self.check(generation, rows)
        maps = {}
        for key, shape in self.shapes.items():
            if rows == 0:
                maps[key] = np.empty((0, *shape), self.dtype)
                continue
            maps[key] = np.memmap(self.file(generation, key), dtype=self.dtype, mode="r",
                                  shape=(rows, *shape))
        return maps

    def write_generation(self, generation: int, source: Mapping[str, np.ndarray],
                         order: np.ndarray) -> None:
        """Durably write a new generation holding ``source[key][order]`` for every key. A
        failed write (a full disk) deletes the partial generation and is raised as one line
        (`write_error`)."""
        folder = self.folder(generation)
        _remove_tree(folder)  # a leftover of an interrupted compaction
        try:
            folder.mkdir()
            for key in self.shapes:
                with open(self.file(generation, key), "wb") as f:
                    for start in range(0, len(order), _COPY_ROWS):
                        rows = source[key][order[start:start + _COPY_ROWS]]
                        f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
                    f.flush()
                    _fsync(f.fileno())
            _sync_folder(folder)
            _sync_folder(self.root)
        except OSError as err:
            _remove_tree(folder)
            raise write_error(self.root, "feature files", err) from None

    def _cut_to(self, generation: int, rows: int) -> None:
        """Best effort after a failed append: the files back to their ``rows`` committed rows
        (otherwise the next append cuts them)."""
        for key, row_bytes in self.row_bytes.items():
            with contextlib.suppress(OSError):
                os.truncate(self.file(generation, key), rows * row_bytes)

    def generations(self) -> list[int]:
        """The generation numbers of the feature folders present."""
        return sorted(int(m.group(1)) for entry in self.root.iterdir()
                      if (m := _GENERATION.match(entry.name)) and entry.is_dir())

    def remove_other_generations(self, keep: int | None) -> None:
        """Delete generation folders other than ``keep`` (superseded or never committed);
        ``None`` deletes them all."""
        for generation in self.generations():
            if generation != keep:
                _remove_tree(self.folder(generation))

    def total_bytes(self) -> int:
        """Bytes of every feature file in the folder (all generations present)."""
        return sum(f.stat().st_size for g in self.generations()
                   for f in self.folder(g).iterdir() if f.suffix in SUFFIXES.values())


def is_generation_folder(entry: Path) -> bool:
    """Whether a folder entry is a generation folder holding only feature files."""
    return (entry.is_dir() and _GENERATION.match(entry.name) is not None
            and all(f.suffix in SUFFIXES.values() and f.is_file() for f in entry.iterdir()))
