"""A bundle's features: their names, the match layout, and feature sets walked in chunks.

Names (docs/bundle.md): the extractor output of stream ``ds``/``di`` at scale ``res4``/``res5``
is ``<stream>_<scale>``, in graph order streams first, then scales; the matcher graphs take it
as ``query_<name>`` and ``gallery_<name>``. Every part of the toolkit that builds or reads such
a name goes through `feature_name`, `feature_names`, `split_feature_name`, `matcher_input`.
Bundles with the global descriptor (format version 2, docs/scale.md) have one more output,
`DESCRIPTOR` ``[N, D]``, which is not a feature map: it keeps its layout and travels beside
the maps in a feature set.

A feature set is a dict ``{name: array [N, ...]}`` in match layout: DS ``[N, K, HW, C]``, DI
``[N, HW, C]`` (`match_layout`), numpy arrays in the runtime. Matching walks a gallery's
features in chunks through one interface, `FeatureSource` (``len``, ``iter_chunks``, ``take``),
which in-memory features (`FeatureArrays`) and a gallery index snapshot
(`tal_infer.index.IndexContents`) both provide.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

Features = dict[str, np.ndarray]
MATCHER_SIDES = ("query", "gallery")
DESCRIPTOR = "descriptor"  # the extractor output holding the global descriptor


def feature_name(stream: str, scale: str) -> str:
    """The extractor output of one stream at one scale, e.g. ``ds_res4``."""
    return f"{stream}_{scale}"


def feature_names(streams: Iterable[str], scales: Sequence[str]) -> list[str]:
    """Every (stream, scale) output in graph order: streams first, then scales."""
    return [feature_name(stream, scale) for stream in streams for scale in scales]


def split_feature_name(name: str) -> tuple[str, str]:
    """``ds_res4`` -> (``ds``, ``res4``)."""
    stream, scale = name.split("_", 1)
    return stream, scale


def matcher_input(side: str, name: str) -> str:
    """The matcher graph input of feature ``name`` for ``side`` "query" or "gallery"."""
    return f"{side}_{name}"


def match_layout(maps: Any) -> Any:
    """Extractor layout -> match layout, contiguous: ``[N, K, C, h, w]`` -> ``[N, K, HW, C]``
    and ``[N, C, h, w]`` -> ``[N, HW, C]`` (HW row-major over (h, w)); numpy arrays and torch
    tensors alike."""
    x = maps.reshape(*maps.shape[:-2], -1).swapaxes(-1, -2)
    return x.contiguous() if hasattr(x, "contiguous") else np.ascontiguousarray(x)


def outputs_in_match_layout(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Extractor outputs -> a feature set: every map through `match_layout`, the descriptor
    as it is."""
    return {k: v if k == DESCRIPTOR else match_layout(v) for k, v in outputs.items()}


def num_items(features: Mapping[str, Any]) -> int:
    """N of a feature set (every array has the same first dimension)."""
    return len(next(iter(features.values())))


def stack_features(parts: Sequence[Mapping[str, np.ndarray]]) -> Features:
    """Concatenate feature sets along N."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def chunk_bounds(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of ``size`` items covering ``total``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)


Chunks = Iterable[tuple[int, int, Mapping[str, Any]]]


class FeatureSource(Protocol):
    """A gallery's features as matching reads them: in chunks, or by gallery column."""

    def __len__(self) -> int: ...

    def iter_chunks(self, size: int) -> Iterator[tuple[int, int, Features]]:
        """(start, stop, features of items start..stop) over all items."""

    def take(self, columns: Sequence[int] | np.ndarray,
             keys: Iterable[str] | None = None) -> Features:
        """The features of the given items (gallery columns), in that order: every output, or
        only ``keys`` (two-stage retrieval reads the descriptors alone, then the maps of a
        few candidates)."""


class FeatureArrays:
    """A `FeatureSource` over an in-memory feature set."""

    def __init__(self, features: Features):
        self.features = features

    def __len__(self) -> int:
        return num_items(self.features)

    def iter_chunks(self, size: int) -> Iterator[tuple[int, int, Features]]:
        for start, stop in chunk_bounds(len(self), size):
            yield start, stop, {k: v[start:stop] for k, v in self.features.items()}

    def take(self, columns: Sequence[int] | np.ndarray,
             keys: Iterable[str] | None = None) -> Features:
        columns = np.asarray(columns, np.int64)
        return {k: self.features[k][columns] for k in (self.features if keys is None else keys)}


class FeatureSubset:
    """A `FeatureSource` over some columns of another one (read from it on request, so a
    subset of an index costs no memory until a chunk is read)."""

    def __init__(self, source: FeatureSource, columns: np.ndarray,
                 keys: Sequence[str] | None = None):
        self.source, self.columns, self.keys = source, np.asarray(columns, np.int64), keys

    def __len__(self) -> int:
        return len(self.columns)

    def iter_chunks(self, size: int) -> Iterator[tuple[int, int, Features]]:
        for start, stop in chunk_bounds(len(self), size):
            yield start, stop, self.source.take(self.columns[start:stop], self.keys)

    def take(self, columns: Sequence[int] | np.ndarray,
             keys: Iterable[str] | None = None) -> Features:
        return self.source.take(self.columns[np.asarray(columns, np.int64)],
                                self.keys if keys is None else keys)


def feature_chunks(features: Features, size: int) -> Iterator[tuple[int, int, Features]]:
    """(start, stop, features) over an in-memory feature set in chunks of ``size``."""
    return FeatureArrays(features).iter_chunks(size)
