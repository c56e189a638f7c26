"""Feature rows on disk: one raw fp16 file per feature key, one folder per generation.

``<index>/features-<generation>/<key>.f16`` holds rows ``[rows, *item_shape]`` in C order,
little-endian float16, no header (the catalog records shapes, row count and generation).
Rows are only appended; bytes past the catalog's committed row count are leftovers of an
interrupted write and are cut off before the next append. Compaction writes a whole new
generation beside the old one; the catalog commit that names it is the switch.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

FEATURE_DTYPE = np.dtype("<f2")
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
    """The feature files of an index folder, for a fixed set of keys and item shapes."""

    def __init__(self, root: Path, shapes: Mapping[str, tuple[int, ...]]):
        self.root = root
        self.shapes = {key: tuple(int(d) for d in shape) for key, shape in shapes.items()}
        self.row_bytes = {key: int(np.prod(shape)) * FEATURE_DTYPE.itemsize
                          for key, shape in self.shapes.items()}

    def folder(self, generation: int) -> Path:
        return self.root / f"features-{generation}"

    def append(self, generation: int, committed: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Durably write ``arrays`` as rows ``committed..``; visible once the catalog commits."""
        folder = self.folder(generation)
        if not folder.is_dir():
            folder.mkdir()
            _sync_folder(self.root)
        for key, array in arrays.items():
            with open(folder / f"{key}.f16", "ab+") as f:
                f.truncate(committed * self.row_bytes[key])  # drop an interrupted write
                f.seek(0, os.SEEK_END)
                f.write(np.ascontiguousarray(array, dtype=FEATURE_DTYPE).tobytes())
                f.flush()
                _fsync(f.fileno())
        _sync_folder(folder)

    def open(self, generation: int, rows: int) -> dict[str, np.ndarray]:
        """Read-only memory maps ``[rows, *shape]`` of the committed rows (no copy)."""
        maps = {}
        for key, shape in self.shapes.items():
            if rows == 0:
                maps[key] = np.empty((0, *shape), FEATURE_DTYPE)
                continue
            maps[key] = np.memmap(self.folder(generation) / f"{key}.f16", dtype=FEATURE_DTYPE,
                                  mode="r", shape=(rows, *shape))
        return maps

    def write_generation(self, generation: int, source: Mapping[str, np.ndarray],
                         order: np.ndarray) -> None:
        """Durably write a new generation holding ``source[key][order]`` for every key."""
        folder = self.folder(generation)
        _remove_tree(folder)  # a leftover of an interrupted compaction
        folder.mkdir()
        for key in self.shapes:
            with open(folder / f"{key}.f16", "wb") as f:
                for start in range(0, len(order), _COPY_ROWS):
                    rows = source[key][order[start:start + _COPY_ROWS]]
                    f.write(np.ascontiguousarray(rows, dtype=FEATURE_DTYPE).tobytes())
                f.flush()
                _fsync(f.fileno())
        _sync_folder(folder)
        _sync_folder(self.root)

    def remove_other_generations(self, keep: int) -> None:
        """Delete generation folders other than ``keep`` (superseded or never committed)."""
        for entry in self.root.iterdir():
            match = _GENERATION.match(entry.name)
            if match and int(match.group(1)) != keep:
                _remove_tree(entry)
