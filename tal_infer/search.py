"""Ranking a gallery of image files for query image files: what `tal-infer` does, as library calls.

    engine = ReIDEngine("export/demo")
    queries = engine.embed_files(query_paths)
    gallery = embed_gallery(engine, gallery_paths, index=engine.open_index("g.index"))
    result = search(engine, queries, gallery, SearchOptions(topk=5, rerank=True))
    write_ranks(Path("ranks.json"), queries.paths, gallery.paths, result.rows)

`embed_gallery` gives a gallery's features, extracted in memory or synced through a gallery
index, as a `GalleryFiles`: the file paths and a `FeatureSource` (tal_infer.features), the one
gallery interface that matching, re-ranking and the report read. `search` ranks it for every
query: top-k per query (same-camera pairs left out when asked, cameras from Market-1501-style
names), k-reciprocal re-ranking when asked, the full score matrix when asked for or needed,
and the identities the metrics need when every name carries one. With
``SearchOptions(candidates=M)`` it retrieves in two stages (`tal_infer.cascade`): FAISS picks
each query's M best gallery entries by global descriptor, and only those get the TAL score.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .candidates import CandidateOptions, CandidateSearch
from .cascade import (PRERANK_STREAM, Shortlists, descriptors, prerank_width,
                      require_descriptor, shortlist)
from .engine import Embedded, ReIDEngine
from .features import DESCRIPTOR, FeatureArrays, Features, FeatureSource
from .index import GalleryIndex, SyncReport
from .naming import parse_market_name
from .reranking import k_reciprocal
from .scoring import top_k

Labels = tuple[np.ndarray, np.ndarray]  # (pids, cameras) in file order


@dataclass
class GalleryFiles:
    """Gallery image files and their features, in memory or in a gallery index snapshot."""
    paths: list[str]
    features: FeatureSource
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sync: SyncReport | None = None  # what syncing the index did (None: extracted in memory)


@dataclass(frozen=True)
class SearchOptions:
    topk: int = 10
    exclude_same_camera: bool = False
    rerank: bool = False        # k-reciprocal re-ranking (needs query-query, gallery-gallery)
    keep_scores: bool = False   # return the full score matrix even when nothing else needs it
    progress: bool = False
    candidates: int = 0         # two-stage retrieval: TAL score on the top M by descriptor only
    candidate_search: str = "exact"  # stage-1 FAISS index (`tal_infer.candidates.SEARCH_KINDS`)
    prerank: int | None = None  # DI pre-rank width (`tal_infer.cascade.prerank_width`)


@dataclass
class SearchResult:
    rows: list[list[tuple[int, float]]]  # per query: (gallery column, score), best first
    scores: np.ndarray | None            # [Nq, Ng] float32 (re-ranked: 1 - d) when kept;
                                         # two-stage: NaN for entries not scored
    identities: tuple[Labels, Labels] | None  # (queries, gallery) when every name has them
    warnings: list[str] = field(default_factory=list)
    ranking: np.ndarray | None = None    # [Nq, Ng] whose row order is each query's full
                                         # ranking, for the metrics (with identities)
    notes: list[str] = field(default_factory=list)  # what the search did, for the log


def embed_gallery(engine: ReIDEngine, paths: Sequence[str], index: GalleryIndex | None = None,
                  on_error: str = "fail", progress: bool = False) -> GalleryFiles:
    """The gallery's features: extracted in memory, or (``index``) synced through the index
    (only new and changed files are extracted) and read from its snapshot."""
    if index is None:
        embedded = engine.embed_files(paths, on_error, progress, desc="gallery")
        return GalleryFiles(embedded.paths, FeatureArrays(embedded.features), embedded.skipped)
    report = engine.sync_index(index, paths, on_error, progress)
    contents = index.load()
    return GalleryFiles(contents.paths, contents, report.skipped, report)


def search(engine: ReIDEngine, queries: Embedded, gallery: GalleryFiles,
           options: SearchOptions = SearchOptions()) -> SearchResult:
    """Rank ``gallery`` for every query (see the module doc)."""
    q_ids, g_ids = file_identities(queries.paths), file_identities(gallery.paths)
    identities = None if q_ids is None or g_ids is None else (q_ids, g_ids)
    cameras, warnings = None, []
    if options.exclude_same_camera:
        cameras = (file_cameras(queries.paths), file_cameras(gallery.paths))
        if (cameras[0] < 0).all() or (cameras[1] < 0).all():
            warnings.append("same-camera exclusion: file names carry no cameras; nothing "
                            "excluded")
    if options.candidates:
        return _two_stage(engine, queries.features, gallery.features, options, cameras,
                          identities, warnings)
    keep = options.keep_scores or options.rerank or identities is not None
    ranking = engine.rank(queries.features, gallery.features, options.topk, cameras,
                          keep_scores=keep, progress=options.progress)
    scores, topk = ranking.scores, ranking.topk
    if options.rerank:
        scores = reranked_scores(engine, queries.features, gallery.features, scores,
                                 options.progress)
        topk = top_k(scores, options.topk, cameras)
    return SearchResult(topk.rows(), scores, identities, warnings,
                        scores if identities is not None else None)


def _two_stage(engine: ReIDEngine, queries: Features, gallery: FeatureSource,
               options: SearchOptions, cameras: Labels | None,
               identities: tuple[Labels, Labels] | None, warnings: list[str]) -> SearchResult:
    """`search` with ``options.candidates = M``. Re-ranking works on the union of the
    queries' candidate lists (its neighbour sets need gallery-gallery scores; with camera
    exclusion, the union of the lists with and without it, as exhaustive re-ranking sees every
    camera), then orders each query's own list. As in exhaustive matching, camera exclusion
    shapes the rank lists, not the metrics: with both, the metrics come from a second
    shortlist that excludes nothing. The metrics rank each query's candidates by TAL score,
    then the other pre-ranked entries by DI score, then the rest by descriptor
    (`Shortlists.rank_keys`)."""
    require_descriptor(queries)
    m = options.candidates
    width = prerank_width(engine.scorer, m, options.prerank, len(gallery))
    g_desc = descriptors(gallery.take(np.arange(len(gallery)), [DESCRIPTOR]))
    stage1 = CandidateSearch(g_desc, CandidateOptions(options.candidate_search,
                                                      device=engine.device))
    note = (f"stage 1: {options.candidate_search} search over {len(gallery)} descriptors on "
            f"{stage1.where}")
    if width > m:
        note += (f", the top {min(width, len(gallery))} narrowed by the {PRERANK_STREAM.upper()} "
                 "stream's score")
    note += f"; stage 2: TAL score on {min(m, len(gallery))} candidates per query"

    def ranked(exclude: Labels | None) -> Shortlists:
        lists = shortlist(engine.scorer, queries, gallery.take, stage1, m, exclude,
                          options.progress, width)
        if not options.rerank:
            return lists
        near = lists.columns if exclude is None else lists.columns + stage1.search(
            descriptors(queries), m)
        union = np.unique(np.concatenate(near))
        g_union = FeatureArrays(gallery.take(union, engine.scorer.keys))
        rescored = reranked_scores(engine, queries, g_union,
                                   engine.scores(queries, g_union), options.progress)
        return Shortlists.ordered(lists.columns, [
            rescored[i, np.searchsorted(union, cols)] for i, cols in enumerate(lists.columns)],
            lists.prerank)

    lists = ranked(cameras)
    ranking = None
    if identities is not None:
        for_metrics = lists if cameras is None else ranked(None)
        ranking = for_metrics.rank_keys(descriptors(queries) @ g_desc.T)
    scores = lists.dense(len(gallery)) if options.keep_scores else None
    return SearchResult(lists.rows(options.topk), scores, identities, warnings, ranking,
                        [note])


def reranked_scores(engine: ReIDEngine, queries: Features, gallery: FeatureSource,
                    scores: np.ndarray, progress: bool = False) -> np.ndarray:
    """k-reciprocal re-ranking on ``d = 1 - sigmoid(score)``, returned as scores ``1 - d``."""
    g_all = gallery.take(np.arange(len(gallery)))

    def distances(s: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(s.astype(np.float64)))  # 1 - sigmoid

    dist = k_reciprocal(distances(scores), distances(engine.scores(queries, queries)),
                        distances(engine.scores(g_all, g_all)), progress=progress)
    return (1.0 - dist).astype(np.float32)


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
