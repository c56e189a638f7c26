"""Rank metrics for query-vs-gallery re-identification: mAP, CMC and mINP.

The Market-1501 protocol, as in open-reid and QAConv (and paper Sec. 4: mAP and CMC top-k):

- gallery entries with the same pid AND the same camera as the query are ignored (they are
  neither matches nor negatives); gallery entries with pid -1 (Market-1501 "junk") are ignored
  too, which equals the open-reid/QAConv loaders dropping them before evaluation;
- queries without any remaining match (a person the gallery has not seen, the ordinary case in
  a camera network) are skipped: ``num_valid_queries`` of ``num_queries`` are scored; when
  none is, the metrics are undefined and `UndefinedMetricsError` says so;
- AP is scikit-learn's ``average_precision_score(y_true, -dist)`` on the remaining entries:
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct distance thresholds. **Ties:** entries
  with equal distance form one threshold, so every match in a tie group gets the precision at
  the end of the group (matches and non-matches of the group all counted). Without ties this
  is the usual mean of precision@rank over the matches;
- CMC uses first-match break and mINP (Ye et al., TPAMI 2021) the rank of the last match, both
  in the order of a **stable** sort by distance: tied entries rank by gallery column index.

The implementation needs no argsort of the rows: blocks of query rows are value-sorted (a
SIMD sort, several times faster than a stable argsort), and each match's rank counts come
from binary searches of its distance in its row; only the few matches themselves are
argsorted. Exact for ties; timings in ``benchmarks/metrics.py``.
"""
from __future__ import annotations

from typing import TypedDict

import numpy as np

from .errors import DataError

JUNK_PID = -1
_CHUNK_ELEMENTS = 1 << 22  # distance entries per block of query rows (~4M, a few 10 MB)


class RankMetrics(TypedDict):
    """mAP and mINP in [0, 1]; ``cmc[k]`` = top-(k+1) accuracy over the valid queries."""
    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    num_queries: int


class UndefinedMetricsError(DataError):
    """No query has a match in the gallery, so there is nothing to average."""


def evaluate(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
             q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int = 50) -> RankMetrics:
    """mAP, CMC[max_rank] and mINP of a distance matrix ``[Nq, Ng]`` (lower = more similar).

    ``cmc[k]`` is the fraction of valid queries whose first match is within the top k+1.
    Raises `UndefinedMetricsError` (a ``DataError``) when no query has a valid match.
    """
    return _rank_metrics(distmat, 1.0, q_pids, g_pids, q_camids, g_camids, max_rank)


def evaluate_scores(scores: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    q_camids: np.ndarray, g_camids: np.ndarray,
                    max_rank: int = 50) -> RankMetrics:
    """`evaluate` for a similarity matrix (higher = more similar), as the matcher returns.

    Identical to ``evaluate(-scores, ...)`` (negation keeps ties), without the full copy.
    """
    return _rank_metrics(scores, -1.0, q_pids, g_pids, q_camids, g_camids, max_rank)


def _rank_metrics(matrix: np.ndarray, sign: float, q_pids, g_pids, q_camids, g_camids,
                  max_rank: int) -> RankMetrics:
    matrix = np.asarray(matrix)  # no copy for arrays and memory maps
    q_pids, q_camids = np.asarray(q_pids).ravel(), np.asarray(q_camids).ravel()
    g_pids, g_camids = np.asarray(g_pids).ravel(), np.asarray(g_camids).ravel()
    if matrix.ndim != 2 or matrix.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(q_pids)} queries "
                         f"x {len(g_pids)} gallery entries")
    if len(q_camids) != len(q_pids) or len(g_camids) != len(g_pids):
        raise ValueError("pids and camids must have the same length")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    first_hits, aps, inps = [], [], []
    g_junk = g_pids == JUNK_PID
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(g_pids)))
    for start in range(0, len(q_pids), rows):
        q = slice(start, start + rows)
        dist = np.asarray(matrix[q], dtype=np.result_type(matrix.dtype, np.float32)) * sign
        if np.isnan(dist).any():
            raise ValueError("distance matrix contains NaN")
        same_pid = q_pids[q, None] == g_pids[None, :]
        ignored = (same_pid & (q_camids[q, None] == g_camids[None, :])) | g_junk
        match = same_pid & ~ignored
        # NaN sorts last and compares false, so ignored entries drop out of every count.
        valid_sorted = np.sort(np.where(ignored, np.nan, dist), axis=1)
        for r in np.flatnonzero(match.any(axis=1)):
            first_hit, ap, inp = _query_ranks(dist[r], np.flatnonzero(match[r]),
                                              valid_sorted[r], ignored[r])
            first_hits.append(first_hit)
            aps.append(ap)
            inps.append(inp)
    if not aps:
        raise UndefinedMetricsError("no query has a matching identity in the gallery (other "
                                    "camera); rank metrics are undefined")
    hist = np.bincount(np.minimum(first_hits, max_rank), minlength=max_rank + 1)[:max_rank]
    return RankMetrics(mAP=float(np.mean(aps)), cmc=np.cumsum(hist) / len(aps),
                       mINP=float(np.mean(inps)), num_valid_queries=len(aps),
                       num_queries=len(q_pids))


def _query_ranks(dist: np.ndarray, match_cols: np.ndarray, valid_sorted: np.ndarray,
                 ignored: np.ndarray) -> tuple[int, float, float]:
    """(0-based stable rank of the first match, AP, INP) of one query with >= 1 match."""
    order = np.argsort(dist[match_cols], kind="stable")  # matches in (distance, column) order
    match_cols = match_cols[order]
    match_d = dist[match_cols]
    below = np.searchsorted(valid_sorted, match_d, "left")   # valid entries with d < d_k
    upto = np.searchsorted(valid_sorted, match_d, "right")   # valid entries with d <= d_k
    matches_upto = np.searchsorted(match_d, match_d, "right")
    ap = float(np.mean(matches_upto / upto))  # precision at the end of each match's tie group
    n = len(match_cols)
    first_rank = _stable_rank(0, match_cols, match_d, below, upto, dist, ignored)
    last_rank = _stable_rank(n - 1, match_cols, match_d, below, upto, dist, ignored)
    return first_rank, ap, n / (last_rank + 1)


def _stable_rank(k: int, match_cols: np.ndarray, match_d: np.ndarray, below: np.ndarray,
                 upto: np.ndarray, dist: np.ndarray, ignored: np.ndarray) -> int:
    """0-based position of match k among the valid entries in (distance, column) order."""
    tied_matches = np.searchsorted(match_d, match_d[k], "right") - np.searchsorted(
        match_d, match_d[k], "left")
    if upto[k] - below[k] == tied_matches:  # only matches share its distance: already ordered
        return int(below[k] + k - np.searchsorted(match_d, match_d[k], "left"))
    col = match_cols[k]
    return int(below[k] + np.count_nonzero(~ignored[:col] & (dist[:col] == match_d[k])))
