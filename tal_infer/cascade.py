"""Two-stage retrieval: FAISS candidates by the global descriptor, then the full TAL score on
each query's candidates only (DESIGN.md section 6; docs/scale.md).

Stage 1 (`tal_infer.candidates`) gives every query its top-M gallery columns by descriptor inner
product. Stage 2 gathers the feature maps of exactly those columns (from an index: the rows of
its memory-mapped feature files, nothing else is read) and scores them with the same heads and
kernel as exhaustive matching (`Scorer.scores`); the final order is by TAL score, ties by lower
gallery column, as `TopK` orders the exhaustive ranking. With M >= the gallery size every entry
is a candidate and the result equals exhaustive matching.

What the cascade ranks beyond its candidates (for mAP, which needs a full ranking): the
candidates by TAL score first, then every other entry in stage-1 order (descriptor similarity),
the usual way a re-ranked shortlist is evaluated (`Shortlists.rank_keys`).

The DI pre-rank (``prerank=N > M``; by default `PRERANK_FACTOR` x M, at most 5% of the
gallery, for models that score the DI stream beside the DS experts): stage 1 takes the top N
by descriptor, the DI stream's part of the TAL score (one of the K + 1 streams, its features
alone are read) keeps the best M of them, and only those get the full score. The descriptor
alone cannot order the near-ties at the top of a large gallery's ranking; the DI stream's
score orders them as the full score does (measured in docs/scale.md), at 1 / (K + 1) of its
cost or less. Beyond the M, the pre-ranked entries follow by DI score, then the rest by
descriptor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .features import DESCRIPTOR
from .candidates import CandidateSearch
from .errors import TalError

Features = dict[str, np.ndarray]
Gather = Callable[[np.ndarray, Sequence[str]], Mapping[str, Any]]  # (columns, keys) -> features
PRERANK_STREAM = "di"
PRERANK_FACTOR = 10  # default pre-rank width, in multiples of M (docs/scale.md, measured)
PRERANK_MAX_SHARE = 0.05  # ... and at most this share of the gallery


@dataclass
class Shortlists:
    """Per query: its candidate gallery columns and their TAL scores, best first (ties: lower
    column first; `ordered` sorts them so). ``prerank``: the wider pre-ranked lists the
    candidates were taken from (their DI scores), ranked below the candidates."""
    columns: list[np.ndarray]
    scores: list[np.ndarray]
    prerank: "Shortlists | None" = None

    @classmethod
    def ordered(cls, columns: list[np.ndarray], scores: list[np.ndarray],
                prerank: "Shortlists | None" = None) -> "Shortlists":
        """Each query's (columns, scores) sorted by score, ties by lower column."""
        orders = [np.lexsort((cols, -sc)) for cols, sc in zip(columns, scores)]
        return cls([np.asarray(c, np.int64)[o] for c, o in zip(columns, orders)],
                   [np.asarray(s, np.float32)[o] for s, o in zip(scores, orders)], prerank)

    def rows(self, k: int) -> list[list[tuple[int, float]]]:
        """The top ``k`` (column, score) per query, as `TopK.rows` gives them."""
        return [[(int(c), float(s)) for c, s in zip(cols[:k], sc[:k])]
                for cols, sc in zip(self.columns, self.scores)]

    def dense(self, num_gallery: int) -> np.ndarray:
        """float32 ``[Nq, Ng]``: the TAL scores of the candidates, NaN elsewhere (not scored)."""
        out = np.full((len(self.columns), num_gallery), np.nan, np.float32)
        for i, (cols, sc) in enumerate(zip(self.columns, self.scores)):
            out[i, cols] = sc
        return out

    def rank_keys(self, stage1: np.ndarray) -> np.ndarray:
        """float32 ``[Nq, Ng]`` whose order per row is the cascade's full ranking: candidates by
        TAL score, then the pre-ranked rest by DI score, then the rest by ``stage1``
        (descriptor similarities). Only the order means anything (for
        `metrics.evaluate_scores`)."""
        base = stage1 if self.prerank is None else self.prerank.rank_keys(stage1)
        keys = np.array(base, dtype=np.float32)
        for i, (cols, sc) in enumerate(zip(self.columns, self.scores)):
            if len(cols):
                keys[i] += float(sc.min()) - 1.0 - float(keys[i].max())
                keys[i, cols] = sc
        return keys


def require_descriptor(outputs: Iterable[str]) -> None:
    """`TalError` unless the extractor outputs include the global descriptor (bundles
    exported before it existed have none)."""
    if DESCRIPTOR not in outputs:
        raise TalError("this model has no global descriptor, which two-stage retrieval needs: "
                       "distil one (tal-distill CKPT --images CROPS) and re-export it with this "
                       "toolkit version, or match exhaustively (--candidates 0)")


def descriptors(features: Mapping[str, Any]) -> np.ndarray:
    """The ``descriptor`` rows of a feature dict as float32 (`require_descriptor`)."""
    require_descriptor(features)
    return np.asarray(features[DESCRIPTOR], dtype=np.float32)


def prerank_width(scorer: Any, m: int, prerank: int | None, gallery_size: int) -> int:
    """How many descriptor candidates the DI pre-rank narrows to ``m`` (0: no pre-rank).
    ``prerank`` None (auto): `PRERANK_FACTOR` x ``m``, at most `PRERANK_MAX_SHARE` of the
    gallery, where the model scores the DI stream beside other streams, else none (a small
    gallery's descriptor top M already holds the TAL top 10: docs/scale.md); 0: none;
    N: N (at least ``m``)."""
    if prerank is None:
        streams = scorer.streams
        if PRERANK_STREAM not in streams or len(streams) == 1:
            return 0
        width = min(PRERANK_FACTOR * m, int(PRERANK_MAX_SHARE * gallery_size))
        return width if width > m else 0
    if prerank < 0 or 0 < prerank < m:
        raise TalError(f"the pre-rank width must be 0 (none) or at least the {m} candidates, "
                       f"got {prerank}")
    if prerank and PRERANK_STREAM not in scorer.streams:
        scorer.of_streams([PRERANK_STREAM])  # raises: names the streams the model has
    return prerank


def shortlist(scorer: Any, queries: Mapping[str, np.ndarray], gather: Gather,
              search: CandidateSearch, m: int,
              cameras: tuple[np.ndarray, np.ndarray] | None = None,
              progress: bool = False, prerank: int | None = None) -> Shortlists:
    """Stage 1 (top ``m`` by descriptor, same-camera entries left out when ``cameras`` is
    given; with a pre-rank, the top `prerank_width` narrowed to ``m`` by DI score) and stage 2
    (the TAL score of each query against its own candidates)."""
    width = prerank_width(scorer, m, prerank, search.size)
    candidates = search.search(descriptors(queries), max(m, width), exclude=cameras)
    if width <= m or all(len(c) <= m for c in candidates):
        return rescore(scorer, queries, gather, candidates, progress)
    narrowed = rescore(scorer.of_streams([PRERANK_STREAM]), queries, gather, candidates,
                       progress, desc="pre-ranking")
    lists = rescore(scorer, queries, gather, [c[:m] for c in narrowed.columns], progress)
    return Shortlists(lists.columns, lists.scores, narrowed)


def rescore(scorer: Any, queries: Mapping[str, np.ndarray], gather: Gather,
            candidates: list[np.ndarray], progress: bool = False,
            desc: str = "re-scoring") -> Shortlists:
    """``scorer``'s scores of each query against its candidate columns only (their features
    under ``scorer.keys`` gathered), sorted best first."""
    scores = []
    for i, cols in enumerate(tqdm(candidates, desc=desc, unit="query", disable=not progress)):
        if len(cols) == 0:
            scores.append(np.zeros(0, np.float32))
            continue
        query = {k: v[i:i + 1] for k, v in queries.items() if k in scorer.keys}
        scores.append(scorer.scores(query, gather(np.asarray(cols, np.int64), scorer.keys))[0])
    return Shortlists.ordered(list(candidates), scores)
