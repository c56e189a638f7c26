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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from .features import DESCRIPTOR
from .candidates import CandidateSearch
from .errors import TalError

Features = dict[str, np.ndarray]
Gather = Callable[[np.ndarray], Mapping[str, Any]]  # gallery columns -> their features


@dataclass
class Shortlists:
    """Per query: its candidate gallery columns and their TAL scores, best first (ties: lower
    column first; `ordered` sorts them so)."""
    columns: list[np.ndarray]
    scores: list[np.ndarray]

    @classmethod
    def ordered(cls, columns: list[np.ndarray], scores: list[np.ndarray]) -> "Shortlists":
        """Each query's (columns, scores) sorted by score, ties by lower column."""
        orders = [np.lexsort((cols, -sc)) for cols, sc in zip(columns, scores)]
        return cls([np.asarray(c, np.int64)[o] for c, o in zip(columns, orders)],
                   [np.asarray(s, np.float32)[o] for s, o in zip(scores, orders)])

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
        TAL score, then the rest by ``stage1`` (descriptor similarities), below every
        candidate. Only the order means anything (for `metrics.evaluate_scores`)."""
        keys = np.array(stage1, dtype=np.float32)
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


def shortlist(scorer: Any, queries: Mapping[str, np.ndarray], gather: Gather,
              search: CandidateSearch, m: int,
              cameras: tuple[np.ndarray, np.ndarray] | None = None,
              progress: bool = False) -> Shortlists:
    """Stage 1 (top ``m`` by descriptor, same-camera entries left out when ``cameras`` is
    given) and stage 2 (the TAL score of each query against its own candidates)."""
    candidates = search.search(descriptors(queries), m, exclude=cameras)
    return rescore(scorer, queries, gather, candidates, progress)


def rescore(scorer: Any, queries: Mapping[str, np.ndarray], gather: Gather,
            candidates: list[np.ndarray], progress: bool = False) -> Shortlists:
    """TAL scores of each query against its candidate columns only, sorted best first."""
    scores = []
    for i, cols in enumerate(tqdm(candidates, desc="re-scoring", unit="query",
                                  disable=not progress)):
        if len(cols) == 0:
            scores.append(np.zeros(0, np.float32))
            continue
        query = {k: v[i:i + 1] for k, v in queries.items() if k in scorer.keys}
        scores.append(scorer.scores(query, gather(np.asarray(cols, np.int64)))[0])
    return Shortlists.ordered(list(candidates), scores)
