"""One retrieval pipeline: a plan decided once, and the retriever that executes it.

Every search of the toolkit goes through here: `tal-infer` (`tal_infer.search`), the Python
API (`ReIDEngine.match`) and a shard of a distributed gallery all build a `RetrievalPlan` with
`plan_retrieval` and run it with a `Retriever` over a gallery's features (`FeatureSource`: in
memory or a gallery index snapshot). Each value of the plan is decided in one place:

| value | decided by |
|---|---|
| device | `tal_infer.devices.resolve_device` (engine open) |
| extractor backend | `tal_infer.backends.open_extractor` (engine open) |
| matching backend (concrete, never "auto") | `tal_infer.matching.choose_match_backend` (engine open) |
| top-k, candidates M, camera exclusion, re-ranking | `plan_retrieval` (checked) |
| stage-1 search (kind, device) | `plan_retrieval` (`CandidateOptions`) |
| DI pre-rank width for a gallery of N | `RetrievalPlan.prerank_width` |
| pair-stable scores of the top-k (sharded search) | `Retriever._stable` |

Exhaustive mode scores every gallery entry in chunks (`tal_infer.scoring.rank_gallery`);
two-stage mode (``candidates=M``) shortlists by descriptor with FAISS, narrows by the DI
stream's score and re-scores with the full TAL score (`tal_infer.cascade`). k-reciprocal
re-ranking works in both in bounded memory: the gallery-gallery distances it needs are
computed block by block through the matcher (`tal_infer.reranking.GalleryColumns`), never held
as a matrix.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from .candidates import CandidateOptions, CandidateSearch, load_faiss
from .cascade import PRERANK_STREAM, Shortlists, descriptors, require_descriptor, shortlist
from .errors import TalError
from .features import (DESCRIPTOR, FeatureArrays, Features, FeatureSource, FeatureSubset,
                       num_items)
from .matching import Matcher
from .reranking import GalleryColumns, k_reciprocal
from .scoring import check_streams, rank_gallery, top_k

log = logging.getLogger("tal_infer")
Cameras = tuple[np.ndarray, np.ndarray]  # (query cameras, gallery cameras); -1 = unknown
PRERANK_FACTOR = 10  # default pre-rank width, in multiples of M (docs/scale.md, measured)
PRERANK_MAX_SHARE = 0.05  # ... and at most this share of the gallery
STABLE_WIDTH = 2  # stable scores: the top k are chosen from the block scores' top 2k


@dataclass(frozen=True)
class RetrievalOptions:
    """What a user asks for (the options of tal-infer and of `ReIDEngine.match`)."""
    topk: int = 10
    candidates: int = 0             # two-stage: the TAL score on each query's top M only
    prerank: int | None = None      # DI pre-rank width: None auto, 0 none, N (>= M)
    candidate_search: str = "exact"  # stage-1 FAISS index (`candidates.SEARCH_KINDS`)
    exclude_same_camera: bool = False
    rerank: bool = False            # k-reciprocal re-ranking
    stable_scores: bool = False     # top-k scores computed per pair (`Retriever._stable`)


@dataclass(frozen=True)
class RetrievalPlan:
    """Everything a search does, resolved and checked (`plan_retrieval`)."""
    topk: int
    candidates: int
    prerank: int | None
    stage1: CandidateOptions | None
    exclude_same_camera: bool
    rerank: bool
    streams: tuple[str, ...]
    matcher: str
    device: str
    stable_scores: bool = False

    def prerank_width(self, gallery_size: int) -> int:
        """How many descriptor candidates the DI pre-rank narrows to M (0: none). Auto:
        `PRERANK_FACTOR` x M, at most `PRERANK_MAX_SHARE` of the gallery, where the model
        scores the DI stream beside other streams (a small gallery's descriptor top M already
        holds the TAL top 10: docs/scale.md); otherwise what was asked."""
        if not self.candidates:
            return 0
        if self.prerank is not None:
            return self.prerank
        if PRERANK_STREAM not in self.streams or len(self.streams) == 1:
            return 0
        width = min(PRERANK_FACTOR * self.candidates, int(PRERANK_MAX_SHARE * gallery_size))
        return width if width > self.candidates else 0

    def describe(self, gallery_size: int) -> str:
        """One line saying what a search of a gallery of ``gallery_size`` does."""
        steps = [f"matching: {self.matcher} on {self.device}"]
        if self.candidates:
            steps.append(f"stage 1: {self.stage1.kind} search over {gallery_size} descriptors "
                         f"on {self.stage1.device}")
            width = min(self.prerank_width(gallery_size), gallery_size)
            if width > self.candidates:
                steps.append(f"the top {width} narrowed by the {PRERANK_STREAM.upper()} "
                             "stream's score")
            steps.append(f"stage 2: TAL score on {min(self.candidates, gallery_size)} "
                         "candidates per query")
        else:
            steps.append(f"exhaustive over {gallery_size} entries")
        if self.exclude_same_camera:
            steps.append("same-camera entries left out")
        if self.rerank:
            steps.append("k-reciprocal re-ranking")
        return "; ".join(steps)


def plan_retrieval(options: RetrievalOptions, matcher: Matcher, descriptor_dim: int,
                   device: str) -> RetrievalPlan:
    """The plan for ``options`` with ``matcher`` (its streams) and a model whose descriptor
    has ``descriptor_dim`` values (0: none); `TalError` with one line for anything that
    cannot run, before any image is read."""
    if options.topk < 1:
        raise TalError(f"k (top matches per query) must be at least 1, got {options.topk}")
    m = options.candidates
    if m < 0:
        raise TalError(f"candidates must be >= 0, got {m}")
    if options.prerank is not None:
        if not m and options.prerank:
            raise TalError("the pre-rank narrows the candidates' shortlist: give candidates=M "
                           "too (0 matches exhaustively)")
        if options.prerank < 0 or 0 < options.prerank < m:
            raise TalError(f"the pre-rank width must be 0 (none) or at least the {m} "
                           f"candidates, got {options.prerank}")
        if options.prerank:
            check_streams([PRERANK_STREAM], matcher.streams)
    if options.stable_scores and options.rerank:
        raise TalError("stable scores are matching scores; re-ranked scores are not: ask for "
                       "one of them")
    stage1 = None
    if m:
        load_faiss()
        require_descriptor([DESCRIPTOR] if descriptor_dim else [])
        stage1 = CandidateOptions(options.candidate_search, device=device)
    return RetrievalPlan(options.topk, m, options.prerank, stage1, options.exclude_same_camera,
                         options.rerank, tuple(matcher.streams), matcher.name, matcher.device,
                         options.stable_scores)


@dataclass
class Retrieval:
    """What a search found."""
    rows: list[list[tuple[int, float]]]  # per query: (gallery column, score), best first
    scores: np.ndarray | None    # [Nq, Ng] float32 when kept (re-ranked: 1 - distance;
                                 # two-stage: NaN for entries not scored)
    ranking: np.ndarray | None   # [Nq, Ng] whose row order is each query's full ranking
                                 # (for the metrics), when asked for


class Retriever:
    """Executes a `RetrievalPlan` with a `Matcher` over any gallery."""

    def __init__(self, matcher: Matcher, plan: RetrievalPlan):
        self.matcher, self.plan = matcher, plan

    def retrieve(self, queries: Features, gallery: FeatureSource | Features,
                 cameras: Cameras | None = None, *, stage1: CandidateSearch | None = None,
                 keep_scores: bool = False, full_ranking: bool = False) -> Retrieval:
        """The plan's top-k per query of ``gallery``. ``cameras`` excludes same-camera
        entries when the plan says so; ``stage1``: a FAISS index over exactly this gallery's
        descriptors (built here when None); ``keep_scores``: also the score matrix;
        ``full_ranking``: also each query's ranking of the whole gallery (metrics)."""
        if isinstance(gallery, dict):
            gallery = FeatureArrays(gallery)
        exclude = cameras if self.plan.exclude_same_camera else None
        nq, ng = num_items(queries), len(gallery)
        if nq == 0 or ng == 0:
            empty = np.zeros((nq, ng), np.float32)
            return Retrieval([[] for _ in range(nq)], empty if keep_scores else None,
                             empty if full_ranking else None)
        log.debug("%s", self.plan.describe(ng))
        if self.plan.stable_scores:
            wider = Retriever(self.matcher, replace(self.plan, topk=STABLE_WIDTH
                                                    * self.plan.topk, stable_scores=False))
            found = wider.retrieve(queries, gallery, cameras, stage1=stage1,
                                   keep_scores=keep_scores, full_ranking=full_ranking)
            found.rows = self._stable(queries, gallery, found.rows)
            return found
        if self.plan.candidates:
            return self._two_stage(queries, gallery, exclude, stage1, keep_scores, full_ranking)
        return self._exhaustive(queries, gallery, exclude, keep_scores, full_ranking)

    def _stable(self, queries: Features, gallery: FeatureSource,
                rows: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
        """The top-k of ``rows`` (`STABLE_WIDTH` x k per query, by block scores) with each
        score recomputed for its pair alone, ties by lower column.

        Why: BLAS sums a GEMM in an order that depends on the block's shape, so a pair's
        score differs in the last bits (~1e-7) with the other entries of its matching block;
        a shard's blocks hold other entries than one index's. A pair scored alone has one
        shape, so its score depends on the pair only, and shards and one index agree bit
        for bit. Exact unless more than (`STABLE_WIDTH` - 1) x k entries lie within float32
        rounding of the k-th score (as many copies of one crop)."""
        keys = self.matcher.keys
        stable = []
        for i, row in enumerate(rows):
            query = {k: v[i:i + 1] for k, v in queries.items()}
            scored = [(c, float(self.matcher.scores(query, gallery.take([c], keys))[0, 0]))
                      for c, _ in row]
            stable.append(sorted(scored, key=lambda cs: (-cs[1], cs[0]))[:self.plan.topk])
        return stable

    def scores(self, queries: Features, gallery: FeatureSource) -> np.ndarray:
        """float32 ``[Nq, Ng]``, the gallery streamed in chunks."""
        chunks = gallery.iter_chunks(self.matcher.chunk_size(num_items(queries)))
        return rank_gallery(self.matcher, queries, chunks, len(gallery), 0,
                            keep_scores=True).scores

    def _exhaustive(self, queries: Features, gallery: FeatureSource, exclude: Cameras | None,
                    keep_scores: bool, full_ranking: bool) -> Retrieval:
        chunks = gallery.iter_chunks(self.matcher.chunk_size(num_items(queries)))
        keep = keep_scores or full_ranking or self.plan.rerank
        ranked = rank_gallery(self.matcher, queries, chunks, len(gallery), self.plan.topk,
                              exclude, keep_scores=keep)
        scores, topk = ranked.scores, ranked.topk
        if self.plan.rerank:
            scores = self._reranked(queries, gallery, scores)
            topk = top_k(scores, self.plan.topk, exclude)
        return Retrieval(topk.rows(), scores if keep_scores else None,
                         scores if full_ranking else None)

    def _two_stage(self, queries: Features, gallery: FeatureSource, exclude: Cameras | None,
                   stage1: CandidateSearch | None, keep_scores: bool,
                   full_ranking: bool) -> Retrieval:
        """Re-ranking works on the union of the queries' candidate lists (its neighbour sets
        need gallery-gallery scores; with camera exclusion, the union of the lists with and
        without it, as exhaustive re-ranking sees every camera), then orders each query's
        own list. Camera exclusion shapes the rank lists, not the metrics: with both, the
        metrics come from a second shortlist that excludes nothing. The metrics rank each
        query's candidates by TAL score, then the other pre-ranked entries by DI score, then
        the rest by descriptor (`Shortlists.rank_keys`)."""
        g_desc = None
        if stage1 is None or full_ranking:
            g_desc = descriptors(gallery.take(np.arange(len(gallery)), [DESCRIPTOR]))
        if stage1 is None:
            stage1 = CandidateSearch(g_desc, self.plan.stage1)
        m, width = self.plan.candidates, self.plan.prerank_width(len(gallery))

        def ranked(cams: Cameras | None) -> Shortlists:
            lists = shortlist(self.matcher, queries, gallery.take, stage1, m, cams, width)
            if not self.plan.rerank:
                return lists
            near = lists.columns if cams is None else lists.columns + stage1.search(
                descriptors(queries), m)
            union = np.unique(np.concatenate(near))
            subset = FeatureSubset(gallery, union, self.matcher.keys)
            rescored = self._reranked(queries, subset, self.scores(queries, subset))
            return Shortlists.ordered(lists.columns, [
                rescored[i, np.searchsorted(union, cols)]
                for i, cols in enumerate(lists.columns)], lists.prerank)

        lists = ranked(exclude)
        ranking = None
        if full_ranking:
            for_metrics = lists if exclude is None else ranked(None)
            ranking = for_metrics.rank_keys(descriptors(queries) @ g_desc.T)
        return Retrieval(lists.rows(self.plan.topk),
                         lists.dense(len(gallery)) if keep_scores else None, ranking)

    def _reranked(self, queries: Features, gallery: FeatureSource,
                  q_g: np.ndarray) -> np.ndarray:
        """k-reciprocal re-ranking on ``d = 1 - sigmoid(score)``, returned as scores
        ``1 - d``; the gallery-gallery distances streamed (module doc)."""
        keys = self.matcher.keys

        def columns(start: int, stop: int) -> np.ndarray:
            block = gallery.take(np.arange(start, stop), keys)
            out = np.empty((len(gallery), stop - start), np.float64)
            for lo, hi, feats in gallery.iter_chunks(self.matcher.chunk_size(stop - start)):
                out[lo:hi] = _distances(self.matcher.scores(feats, block))
            return out

        q_q = self.scores(queries, FeatureArrays(queries))
        dist = k_reciprocal(_distances(q_g), _distances(q_q),
                            GalleryColumns(len(gallery), columns))
        return (1.0 - dist).astype(np.float32)


def _distances(scores: np.ndarray) -> np.ndarray:
    """``1 - sigmoid(score)``: a non-negative distance, lower = more similar."""
    return 1.0 / (1.0 + np.exp(np.asarray(scores, np.float64)))


def query_cameras(values: object, n: int) -> np.ndarray:
    """Cameras of ``n`` queries (one value for all, or one per query; None = unknown) as an
    int64 array with -1 for unknown; `TalError` for a wrong count or a non-integer."""
    if values is None or np.isscalar(values):
        values = [values] * n
    values = list(values)  # type: ignore[arg-type]
    if len(values) != n:
        raise TalError(f"query_cameras: {len(values)} values for {n} queries")
    try:
        return np.array([-1 if v is None else _camera(v) for v in values], np.int64)
    except (TypeError, ValueError):
        raise TalError(f"query_cameras must be integers (or None), got {values[:3]}...") \
            from None


def _camera(value: object) -> int:
    if isinstance(value, bool) or not float(value).is_integer():  # type: ignore[arg-type]
        raise ValueError(value)
    return int(value)  # type: ignore[call-overload]
