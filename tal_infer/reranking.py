"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), in numpy with bounded memory.

Follows the authors' published implementation step by step, so the numbers agree with it:

1. all N = Nq + Ng items: squared distances, each row divided by its maximum;
2. k-reciprocal neighbours R(i, k1), expanded (the paper's R*) by every R(c, round(k1/2)) of
   a member c that shares more than 2/3 of its own set with R(i, k1);
3. V[i, j] = exp(-d(i, j)) normalized over the expanded set, then local query expansion:
   V[i] <- mean of V over the k2 nearest neighbours of i;
4. Jaccard distance d_J(q, g) = 1 - sum_j min(V_qj, V_gj) / sum_j max(V_qj, V_gj), written as
   1 - m / (2 - m) with m = sum_j min (rows of V sum to 1);
5. final = (1 - lambda) * d_J + lambda * d.

Readings chosen where the published code is implicit:

- the published code builds the (N x N) matrix D = [[q_q, q_g], [q_g^T, g_g]] and normalizes
  it column-wise before transposing, i.e. it works on D^T. For symmetric q_q and g_g (a metric)
  this is D itself; for asymmetric ones (QAConv scores are not symmetric) we follow the
  published arithmetic exactly: row i of the working matrix is column i of D;
- neighbour lists use a stable order: tied distances rank by item index (queries first, then
  gallery), so results are deterministic;
- a row whose distances are all 0 is left unnormalized instead of dividing by 0.

Memory: never more than a block of rows of the N x N matrix at a time, plus the neighbour
lists (N x (k1+1)) and the sparse V (N x a few hundred); the output Nq x Ng is the only
large array. The gallery-gallery distances need not exist as a matrix either: ``g_g`` may be
a `GalleryColumns`, which computes the columns of one block of rows on request (a gallery
index's features streamed through the matcher; `tal_infer.retrieval`), at the price of
computing them twice (the neighbour lists first, the weights of step 3 second). Inputs must
be non-negative distances (convert similarity scores first, e.g. ``1 - sigmoid(score)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .console import progress

_BLOCK_ELEMENTS = 1 << 23  # entries of the N x N matrix held at once (32 MB of float32)
_PAIR_BUDGET = 1 << 23     # (query entry, gallery entry) pairs per Jaccard block
_ROWS_PER_EXPANSION = 4096


@dataclass(frozen=True)
class GalleryColumns:
    """Gallery-gallery distances computed on request: ``columns(start, stop)`` is
    ``g_g[:, start:stop]`` (``[size, stop - start]``, the distance from every gallery item to
    items start..stop)."""
    size: int
    columns: Callable[[int, int], np.ndarray]


def k_reciprocal(q_g_dist: np.ndarray, q_q_dist: np.ndarray,
                 g_g_dist: np.ndarray | GalleryColumns, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked distances ``[Nq, Ng]`` float32 (lower = more similar)."""
    dists = _Distances(q_g_dist, q_q_dist, g_g_dist)
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1, 0 <= lambda_value <= 1; got {k1}, {k2}, "
                         f"{lambda_value}")
    n, nq = dists.n, dists.nq
    ranks = dists.nearest(min(max(k1 + 1, k2), n))
    near = ranks[:, :min(k1 + 1, n)]
    half = ranks[:, :min(int(np.around(k1 / 2.0)) + 1, n)]
    v = _expanded_weights(dists, near, half, _reciprocal_mask(half))
    if k2 != 1:
        v = _query_expansion(v, ranks[:, :min(k2, n)])
    out = _min_overlap(v, nq)  # m; becomes the final distance in place, block by block
    for start, stop in dists.blocks(rows=nq):
        m = out[start:stop]
        original = dists.rows(start, stop)[:, nq:]
        out[start:stop] = (1 - m / (2 - m)) * (1 - lambda_value) + original * lambda_value
    return out


class _Distances:
    """The normalized N x N working matrix, served a block of rows at a time."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray | GalleryColumns):
        self.q_g, self.q_q = np.asarray(q_g), np.asarray(q_q)
        self.nq, self.ng = self.q_g.shape
        if isinstance(g_g, GalleryColumns):
            self.g_g_columns, g_shape = g_g.columns, (g_g.size, g_g.size)
        else:
            matrix = np.asarray(g_g)
            self.g_g_columns, g_shape = (lambda a, b: matrix[:, a:b]), matrix.shape
            _check_distances(matrix)
        if self.q_q.shape != (self.nq, self.nq) or g_shape != (self.ng, self.ng):
            raise ValueError(f"shapes do not fit: q_g {self.q_g.shape}, q_q {self.q_q.shape}, "
                             f"g_g {g_shape}")
        _check_distances(self.q_g)
        _check_distances(self.q_q)
        self.n = self.nq + self.ng
        self.block = max(1, _BLOCK_ELEMENTS // self.n)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the working matrix: squared, divided by the row maximum."""
        nq = self.nq
        parts = []
        if start < nq:
            end = min(stop, nq)
            parts.append(np.hstack([self.q_q[:, start:end].T, self.q_g[start:end]]))
        if stop > nq:
            begin = max(start, nq) - nq
            columns = self.g_g_columns(begin, stop - nq)
            _check_distances(columns)
            parts.append(np.hstack([self.q_g[:, begin:stop - nq].T, columns.T]))
        block = np.square(np.vstack(parts)).astype(np.float32)
        peak = block.max(axis=1, keepdims=True)
        return block / np.where(peak > 0, peak, np.float32(1))

    def blocks(self, rows: int | None = None, desc: str = "re-ranking"):
        """(start, stop) of consecutive row blocks covering the first `rows` (all N) rows."""
        rows = self.n if rows is None else rows
        for start in progress(range(0, rows, self.block), desc=desc, unit="block"):
            yield start, min(start + self.block, rows)

    def nearest(self, k: int) -> np.ndarray:
        """[N, k] int32: each row's k nearest items, in stable (distance, index) order."""
        out = np.empty((self.n, k), dtype=np.int32)
        for start, stop in self.blocks(desc="re-ranking neighbours"):
            out[start:stop] = _stable_smallest(self.rows(start, stop), k)
        return out


def _check_distances(a: np.ndarray) -> None:
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("distances must be finite and non-negative")


def _stable_smallest(block: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest entries per row, equal to a stable argsort's first k."""
    if k >= block.shape[1]:
        return np.argsort(block, axis=1, kind="stable")
    kth = np.partition(block, k - 1, axis=1)[:, k - 1:k]
    tied = block == kth
    room = k - np.count_nonzero(block < kth, axis=1, keepdims=True)
    # ties at the k-th value: the lowest columns first, as a stable sort takes them
    take = (block < kth) | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    cols = np.nonzero(take)[1].reshape(len(block), k)
    order = np.argsort(np.take_along_axis(block, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _reciprocal_mask(lists: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """mask[i, a]: item i is itself in the list of its a-th neighbour (lists[lists[i, a]])."""
    own = np.arange(len(lists))[rows]
    return (lists[lists[rows]] == own[:, None, None]).any(axis=2)


def _expanded_weights(dists: _Distances, near: np.ndarray, half: np.ndarray,
                      half_reciprocal: np.ndarray) -> _Sparse:
    """Sparse V of eq. 8: exp(-d) normalized over each item's expanded k-reciprocal set."""
    sentinel = dists.n
    parts = []
    for start, stop in dists.blocks(desc="re-ranking weights"):
        rows = slice(start, stop)
        members = near[rows]
        member = _reciprocal_mask(near, rows)                       # R(i, k1)
        cand, cand_member = half[members], half_reciprocal[members]  # R(c, k1/2) of each c
        in_r = ((cand[..., None] == members[:, None, None, :]) & member[:, None, None, :]).any(3)
        shared = np.count_nonzero(in_r & cand_member, axis=2)
        accept = member & (shared > 2.0 / 3 * np.count_nonzero(cand_member, axis=2))
        expanded = np.concatenate([
            np.where(member, members, sentinel),
            np.where(accept[..., None] & cand_member, cand, sentinel).reshape(len(members), -1),
        ], axis=1)
        expanded.sort(axis=1)
        keep = expanded < sentinel
        keep[:, 1:] &= expanded[:, 1:] != expanded[:, :-1]
        owner, slot = np.nonzero(keep)
        cols = expanded[owner, slot]
        weight = np.exp(-dists.rows(start, stop)[owner, cols])
        totals = np.bincount(owner, weights=weight, minlength=stop - start).astype(np.float32)
        parts.append(_Sparse.from_entries(owner, cols, weight / totals[owner], stop - start,
                                          dists.n))
    return _Sparse.stack(parts)


def _query_expansion(v: _Sparse, neighbours: np.ndarray) -> _Sparse:
    """V[i] <- mean of V over the k2 nearest neighbours of i (local query expansion)."""
    k = neighbours.shape[1]
    parts = []
    for start in range(0, v.rows, _ROWS_PER_EXPANSION):
        nb = neighbours[start:start + _ROWS_PER_EXPANSION]
        positions, lengths = v.segments(nb.ravel())
        owner = np.repeat(np.arange(nb.size) // k, lengths)
        parts.append(_Sparse.from_entries(owner, v.indices[positions], v.data[positions],
                                          len(nb), v.width, scale=np.float32(1.0 / k)))
    return _Sparse.stack(parts)


def _min_overlap(v: _Sparse, nq: int) -> np.ndarray:
    """m[q, g] = sum_j min(V[q, j], V[nq + g, j]) for queries q and gallery items g, float32."""
    ng = v.rows - nq
    by_col = v.gallery_columns(nq)
    out = np.empty((nq, ng), np.float32)
    col_lengths = np.diff(by_col.indptr)
    q_end = v.indptr[nq]
    pairs_upto = np.cumsum(np.bincount(np.repeat(np.arange(nq), np.diff(v.indptr[:nq + 1])),
                                       weights=col_lengths[v.indices[:q_end]], minlength=nq))
    max_rows = max(1, _BLOCK_ELEMENTS // max(ng, 1))
    start = 0
    while start < nq:  # blocks of queries bounded in pairs and in output rows
        done = pairs_upto[start - 1] if start else 0.0
        stop = int(np.searchsorted(pairs_upto, done + _PAIR_BUDGET, "right"))
        stop = min(max(stop, start + 1), start + max_rows, nq)
        lo, hi = v.indptr[start], v.indptr[stop]
        owner = np.repeat(np.arange(stop - start), np.diff(v.indptr[start:stop + 1]))
        positions, lengths = by_col.segments(v.indices[lo:hi])
        mins = np.minimum(np.repeat(v.data[lo:hi], lengths), by_col.data[positions])
        target = np.repeat(owner, lengths) * ng + by_col.indices[positions]
        out[start:stop] = np.bincount(target, weights=mins,
                                      minlength=(stop - start) * ng).reshape(-1, ng)
        start = stop
    return out


class _Sparse:
    """A compressed sparse row matrix (indptr, indices, data) with the few ops used here."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int):
        self.indptr, self.indices, self.data, self.width = indptr, indices, data, width
        self.rows = len(indptr) - 1

    @classmethod
    def from_entries(cls, owner: np.ndarray, cols: np.ndarray, vals: np.ndarray, rows: int,
                     width: int, scale: np.float32 | None = None) -> "_Sparse":
        """A rows x width matrix from (row, column, value) entries; duplicates are summed."""
        key = owner.astype(np.int64) * width + cols
        order = np.argsort(key, kind="stable")
        key, vals = key[order], vals[order].astype(np.float32)
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
        sums = np.add.reduceat(vals, first) if len(key) else vals
        if scale is not None:
            sums = sums * scale
        counts = np.bincount(key[first] // width, minlength=rows)
        return cls(np.r_[0, np.cumsum(counts)], (key[first] % width).astype(np.int32), sums,
                   width)

    @classmethod
    def stack(cls, parts: list["_Sparse"]) -> "_Sparse":
        offsets = np.cumsum([0] + [len(p.indices) for p in parts])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
        return cls(indptr, np.concatenate([p.indices for p in parts]),
                   np.concatenate([p.data for p in parts]), parts[0].width)

    def segments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into indices/data) of the given rows' entries, concatenated, and lengths."""
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + within, lengths

    def gallery_columns(self, first_row: int) -> "_Sparse":
        """Rows first_row.. transposed: for each column, its (row - first_row, value) entries."""
        lo = self.indptr[first_row]
        owner = np.repeat(np.arange(self.rows - first_row), np.diff(self.indptr[first_row:]))
        return _Sparse.from_entries(self.indices[lo:].astype(np.int64), owner,
                                    self.data[lo:], self.width, self.rows - first_row)
