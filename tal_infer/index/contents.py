"""`IndexContents`: one committed snapshot of an index, read as matching reads a gallery."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..features import chunk_bounds
from .catalog import IndexRecord


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
