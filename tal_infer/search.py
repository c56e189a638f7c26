"""Ranking a gallery of image files for query image files: what `tal-infer` does, as library calls.

    engine = ReIDEngine("export/demo")
    plan = engine.plan(RetrievalOptions(topk=5, rerank=True))
    queries = engine.embed_files(query_paths)
    gallery = embed_gallery(engine, gallery_paths, index=engine.open_index("g.index"))
    result = search(engine, plan, queries, gallery)
    write_ranks(Path("ranks.json"), queries.paths, gallery.paths, result.rows)

`embed_gallery` gives a gallery's features, extracted in memory or synced through a gallery
index, as a `GalleryFiles`: the file paths and a `FeatureSource` (tal_infer.features), the one
gallery interface that matching, re-ranking and the report read. `search` runs the plan
(`tal_infer.retrieval`) for every query, with what file names tell: cameras from
Market-1501-style names for same-camera exclusion, and the identities the metrics need when
every name carries one.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .engine import Embedded, ReIDEngine
from .features import FeatureArrays, FeatureSource
from .index import GalleryIndex, SyncReport
from .naming import BadNameError, parse_market_name
from .retrieval import RetrievalPlan

log = logging.getLogger("tal_infer")
Labels = tuple[np.ndarray, np.ndarray]  # (pids, cameras) in file order


@dataclass
class GalleryFiles:
    """Gallery image files and their features, in memory or in a gallery index snapshot."""
    paths: list[str]
    features: FeatureSource
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sync: SyncReport | None = None  # what syncing the index did (None: extracted in memory)


@dataclass
class SearchResult:
    rows: list[list[tuple[int, float]]]  # per query: (gallery column, score), best first
    scores: np.ndarray | None            # [Nq, Ng] float32 (re-ranked: 1 - d) when kept;
                                         # two-stage: NaN for entries not scored
    identities: tuple[Labels, Labels] | None  # (queries, gallery) when every name has them
    ranking: np.ndarray | None = None    # [Nq, Ng] whose row order is each query's full
                                         # ranking, for the metrics (with identities)


def embed_gallery(engine: ReIDEngine, paths: Sequence[str], index: GalleryIndex | None = None,
                  on_error: str = "fail") -> GalleryFiles:
    """The gallery's features: extracted in memory, or (``index``) synced through the index
    (only new and changed files are extracted) and read from its snapshot."""
    if index is None:
        embedded = engine.embed_files(paths, on_error, desc="gallery")
        return GalleryFiles(embedded.paths, FeatureArrays(embedded.features), embedded.skipped)
    report = engine.sync_index(index, paths, on_error)
    contents = index.load()
    return GalleryFiles(contents.paths, contents, report.skipped, report)


def search(engine: ReIDEngine, plan: RetrievalPlan, queries: Embedded, gallery: GalleryFiles,
           keep_scores: bool = False) -> SearchResult:
    """Run ``plan`` for every query against ``gallery`` (see the module doc)."""
    q_ids, g_ids = file_identities(queries.paths), file_identities(gallery.paths)
    identities = None if q_ids is None or g_ids is None else (q_ids, g_ids)
    cameras = None
    if plan.exclude_same_camera:
        cameras = (file_cameras(queries.paths), file_cameras(gallery.paths))
        if (cameras[0] < 0).all() or (cameras[1] < 0).all():
            log.warning("same-camera exclusion: file names carry no cameras; nothing excluded")
    log.info("%s", plan.describe(len(gallery.features)))
    found = engine.retriever(plan).retrieve(queries.features, gallery.features, cameras,
                                            keep_scores=keep_scores,
                                            full_ranking=identities is not None)
    return SearchResult(found.rows, found.scores, identities, found.ranking)


def vet_names(paths: Sequence[str], on_error: str = "fail"
              ) -> tuple[list[str], list[tuple[str, str]]]:
    """The paths whose Market-style names are usable, and (path, reason) for those that are
    not (an identity or camera number out of range), checked before any extraction so a bad
    name costs nothing: with ``on_error="fail"`` the first one is a `BadNameError`."""
    kept, skipped = [], []
    for path in paths:
        try:
            parse_market_name(Path(path).name)
        except BadNameError as err:
            if on_error == "fail":
                raise BadNameError(path, err.problem) from None
            skipped.append((path, err.problem))
            continue
        kept.append(path)
    return kept, skipped


def file_identities(paths: Sequence[str]) -> Labels | None:
    """(pids, cameras) from Market-style names, or None unless every name carries them."""
    parsed = [parse_market_name(Path(p).name) for p in paths]
    if any(p is None for p in parsed):
        return None
    return np.array([p.pid for p in parsed]), np.array([p.camid for p in parsed])


def file_cameras(paths: Sequence[str]) -> np.ndarray:
    """Camera per path from Market-style names; -1 where a name carries none."""
    parsed = [parse_market_name(Path(p).name) for p in paths]
    return np.array([-1 if p is None else p.camid for p in parsed], np.int64)


def write_ranks(out: str | os.PathLike, query_paths: Sequence[str],
                gallery_paths: Sequence[str], rows: Sequence[Sequence[tuple[int, float]]]
                ) -> None:
    """Rank lists as JSON (``[{"query", "matches": [{"rank", "gallery", "score"}]}]``) or, for
    a ``.csv`` name, CSV rows ``query,rank,gallery,score``."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        data = [{"query": q, "matches": [{"rank": r + 1, "gallery": gallery_paths[c],
                                          "score": s} for r, (c, s) in enumerate(row)]}
                for q, row in zip(query_paths, rows)]
        out.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "gallery", "score"])
        for q, row in zip(query_paths, rows):
            writer.writerows([q, r + 1, gallery_paths[c], f"{s:.6g}"]
                             for r, (c, s) in enumerate(row))
