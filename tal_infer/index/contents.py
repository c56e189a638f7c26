"""`IndexContents`: one committed snapshot of an index, read as matching reads a gallery.

Every read checks that the values it hands out are finite: a NaN or an infinity in a stored
row (a flipped bit, a bad block; the open-time checks cannot see inside rows without reading
them all) would otherwise reach the matching as NaN scores. The check runs on the rows being
read anyway, as integer operations on the values' bits (numpy has no fast float16
``isfinite``), in row blocks (no full-size temporary); the error names the file and the
entries whose rows are damaged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..features import chunk_bounds
from .catalog import IndexRecord
from .errors import IndexDamagedError


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
            out = {k: v[rows[0]:rows[-1] + 1] for k, v in self.features.items()}
        else:
            out = {k: v[rows] for k, v in self.features.items()}
        return self._finite(out, np.arange(start, stop))

    def iter_chunks(self, size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """(start, stop, features) over all records in chunks of ``size``."""
        for start, stop in chunk_bounds(len(self), size):
            yield start, stop, self.chunk(start, stop)

    def take(self, columns: Sequence[int] | np.ndarray,
             keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Features of ``records[columns]`` (every key, or ``keys``; a copy, in memory, any
        order), reading only their rows of the feature files, in file order for locality
        (two-stage retrieval gathers its candidates so)."""
        columns = np.asarray(columns, np.int64)
        rows = self.rows[columns]
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return self._finite({k: np.asarray(self.features[k][rows[order]])[inverse]
                             for k in (self.features if keys is None else keys)}, columns)

    def _finite(self, features: Mapping[str, np.ndarray], columns: np.ndarray
                ) -> dict[str, np.ndarray]:
        """``features`` (of ``records[columns]``), or `IndexDamagedError` naming the file and
        the entries whose stored values are not all finite."""
        for key, values in features.items():
            bad = _non_finite_rows(np.asarray(values))
            if not bad.any():
                continue
            paths = [self.records[c].path for c in columns[bad]]
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            raise IndexDamagedError(
                f"{self._where(key)} holds NaN or infinite values for {len(paths)} entries "
                f"({shown}); erase them (tal-index remove --path) or rebuild the index")
        return dict(features)

    def _where(self, key: str) -> str:
        """``<index>: index is damaged: features-<n>/<key>.<suffix>`` for a memory-mapped
        feature file, else the key."""
        filename = getattr(self.features[key], "filename", None)
        if filename is None:
            return f"index is damaged: feature {key}"
        path = Path(filename)
        return (f"{path.parent.parent}: index is damaged: "
                f"{path.relative_to(path.parent.parent)}")


# IEEE floats by size: (unsigned view, magnitude mask, exponent mask). A value is NaN or
# infinite exactly when its magnitude bits are at least the exponent mask (all ones there).
_BITS = {2: (np.uint16, 0x7FFF, 0x7C00), 4: (np.uint32, 0x7FFF_FFFF, 0x7F80_0000)}
_BLOCK_BYTES = 4 << 20  # rows checked at once: bounds the temporary


def _non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row (first axis), whether any value is NaN or infinite."""
    rows = np.ascontiguousarray(values).reshape(len(values), -1)
    bits = _BITS.get(rows.dtype.itemsize) if rows.dtype.kind == "f" and rows.dtype.isnative \
        else None
    if bits is None:
        return ~np.isfinite(rows).all(axis=1)
    unsigned, magnitude, exponent = bits
    as_int = rows.view(unsigned)
    step = max(1, _BLOCK_BYTES // max(1, rows.shape[1] * rows.dtype.itemsize))
    out = np.zeros(len(rows), bool)
    for start in range(0, len(rows), step):
        block = as_int[start:start + step] & magnitude
        out[start:start + step] = np.maximum.reduce(block, axis=1, initial=0) >= exponent
    return out
