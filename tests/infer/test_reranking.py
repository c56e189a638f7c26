"""k-reciprocal re-ranking against a dense, loop-by-loop reference of the published algorithm."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer import reranking
from tal_infer.reranking import k_reciprocal


def reference(q_g, q_q, g_g, k1, k2, lam):
    """The authors' published algorithm, dense and one item at a time (stable sorts)."""
    nq = len(q_q)
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    work = np.square(full).astype(np.float32)
    work = (work / work.max(axis=0)).T  # column-normalize, then transpose, as published
    n = len(work)
    rank = np.argsort(work, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return np.array([j for j in forward if i in rank[j, :k + 1]], dtype=int)

    v = np.zeros((n, n), np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2.0)))
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        weight = np.exp(-work[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((nq, n), np.float32)
    for i in range(nq):
        overlap = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lam) + work[:nq] * lam
    return final[:, nq:]


def random_distances(rng, nq, ng, symmetric=True, levels=None):
    """Distances between points in a few clusters; quantized to `levels` to create ties."""
    centres = rng.normal(size=(5, 8))
    x = centres[rng.integers(0, 5, nq + ng)] + 0.6 * rng.normal(size=(nq + ng, 8))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    if not symmetric:
        d = d * rng.uniform(0.8, 1.2, d.shape)
        np.fill_diagonal(d, 0)
    if levels is not None:
        d = np.round(d / d.max() * levels) / levels
    return d[:nq, nq:], d[:nq, :nq], d[nq:, nq:]


@pytest.mark.parametrize("seed,symmetric,levels,k1,k2,lam", [
    (0, True, None, 20, 6, 0.3),
    (1, True, None, 5, 3, 0.5),
    (2, False, None, 8, 1, 0.3),
    (3, True, 6, 7, 4, 0.2),
    (4, False, 4, 20, 6, 0.3),
    (5, True, None, 60, 100, 0.1),  # k1 + 1 and k2 beyond N: whole rows
])
def test_matches_reference(seed, symmetric, levels, k1, k2, lam):
    rng = np.random.default_rng(seed)
    dists = random_distances(rng, 12, 40, symmetric, levels)
    got = k_reciprocal(*dists, k1=k1, k2=k2, lambda_value=lam)
    want = reference(*dists, k1, k2, lam)
    assert got.dtype == np.float32 and got.shape == (12, 40)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_small_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(6)
    dists = random_distances(rng, 15, 35)
    want = k_reciprocal(*dists)
    monkeypatch.setattr(reranking, "_BLOCK_ELEMENTS", 100)   # 2 rows of N = 50 per block
    monkeypatch.setattr(reranking, "_PAIR_BUDGET", 50)
    monkeypatch.setattr(reranking, "_ROWS_PER_EXPANSION", 3)
    np.testing.assert_allclose(k_reciprocal(*dists), want, atol=1e-6, rtol=0)


def test_lambda_one_is_the_normalized_squared_distance():
    rng = np.random.default_rng(7)
    q_g, q_q, g_g = random_distances(rng, 6, 20)
    row_max = np.maximum(np.square(q_q).max(axis=1), np.square(q_g).max(axis=1))
    got = k_reciprocal(q_g, q_q, g_g, lambda_value=1.0)
    np.testing.assert_allclose(got, np.square(q_g) / row_max[:, None], rtol=1e-6)


def test_invariants_range_and_gallery_permutation():
    rng = np.random.default_rng(8)
    q_g, q_q, g_g = random_distances(rng, 10, 30)
    got = k_reciprocal(q_g, q_q, g_g)
    assert np.all(got >= 0) and np.all(got <= 1)
    perm = rng.permutation(30)
    permuted = k_reciprocal(q_g[:, perm], q_q, g_g[np.ix_(perm, perm)])
    np.testing.assert_allclose(permuted, got[:, perm], atol=1e-6)


def test_rejects_bad_input():
    q_g, q_q, g_g = np.ones((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))
    with pytest.raises(ValueError, match="shapes do not fit"):
        k_reciprocal(q_g, q_q, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        k_reciprocal(-q_g, q_q, g_g)
    with pytest.raises(ValueError, match="k1 >= 1"):
        k_reciprocal(q_g, q_q, g_g, k1=0)
