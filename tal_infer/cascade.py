"""Two-stage retrieval: FAISS candidates by the global descriptor, then the full TAL score on
each query's candidates only (docs/scale.md).

Stage 1 (`tal_infer.candidates`) gives every query its top-M gallery columns by descriptor inner
product. Stage 2 gathers the feature maps of exactly those columns (from an index: the rows of
its memory-mapped feature files, nothing else is read) and scores them with the same heads and
kernel as exhaustive matching (`Scorer.scores`); the final order is by TAL score, ties by lower
gallery column, as `TopK` orders the exhaustive ranking. With M >= the gallery size every entry
is a candidate and the result equals exhaustive matching.

What the cascade ranks beyond its candidates (for mAP, which needs a full ranking): the
candidates by TAL score first, then every other entry in stage-1 order (descriptor similarity),
the usual way a re-ranked shortlist is evaluated (`Shortlists.rank_keys`).

The DI pre-rank (a width N > M, decided by the retrieval plan:
`tal_infer.retrieval.RetrievalPlan.prerank_width`): stage 1 takes the top N by descriptor, the DI stream's part of the TAL score (one of the K + 1 streams, its features
alone are read) keeps the best M of them, and only those get the full score. The descriptor
alone cannot order the near-ties at the top of a large gallery's ranking; the DI stream's
score orders them as the full score does (measured in docs/scale.md), at 1 / (K + 1) of its
cost or less. Beyond the M, the pre-ranked entries follow by DI score, then the rest by
descriptor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .candidates import CandidateSearch
from .console import progress
from .errors import TalError
from .features import DESCRIPTOR

if TYPE_CHECKING:
    from .matching import Matcher

Gather = Callable[[np.ndarray, Sequence[str]], Mapping[str, Any]]  # (columns, keys) -> features
PRERANK_STREAM = "di"


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


def shortlist(matcher: "Matcher", queries: Mapping[str, np.ndarray], gather: Gather,
              search: CandidateSearch, m: int,
              cameras: tuple[np.ndarray, np.ndarray] | None = None,
              prerank: int = 0) -> Shortlists:
    """Stage 1 (top ``m`` by descriptor, same-camera entries left out when ``cameras`` is
    given; with a pre-rank width above ``m``, the top ``prerank`` narrowed to ``m`` by DI
    score) and stage 2 (the TAL score of each query against its own candidates)."""
    candidates = search.search(descriptors(queries), max(m, prerank), exclude=cameras)
    if prerank <= m or all(len(c) <= m for c in candidates):
        return rescore(matcher, queries, gather, candidates)
    narrowed = rescore(matcher.of_streams([PRERANK_STREAM]), queries, gather, candidates,
                       desc="pre-ranking")
    lists = rescore(matcher, queries, gather, [c[:m] for c in narrowed.columns])
    return Shortlists(lists.columns, lists.scores, narrowed)


def rescore(matcher: "Matcher", queries: Mapping[str, np.ndarray], gather: Gather,
            candidates: list[np.ndarray], desc: str = "re-scoring") -> Shortlists:
    """``matcher``'s scores of each query against its candidate columns only (their features
    under ``matcher.keys`` gathered), sorted best first."""
    scores = []
    for i, cols in enumerate(progress(candidates, desc=desc, unit="query")):
        if len(cols) == 0:
            scores.append(np.zeros(0, np.float32))
            continue
        query = {k: v[i:i + 1] for k, v in queries.items() if k in matcher.keys}
        scores.append(matcher.scores(query, gather(np.asarray(cols, np.int64), matcher.keys))[0])
    return Shortlists.ordered(list(candidates), scores)
