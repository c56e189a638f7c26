"""Rank metrics against a slow, literal per-query reference (scikit-learn's AP definition)."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer import metrics
from tal_infer.errors import DataError
from tal_infer.metrics import evaluate, evaluate_scores


def reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """One query at a time: drop ignored entries, AP over distinct thresholds, stable ranks."""
    aps, first_hits, inps = [], [], []
    for i in range(len(q_pids)):
        keep = ~(((g_pids == q_pids[i]) & (g_cams == q_cams[i])) | (g_pids == -1))
        d, y = dist[i][keep].astype(np.float64), g_pids[keep] == q_pids[i]
        if not y.any():
            continue
        ap, prev_recall = 0.0, 0.0
        for threshold in np.unique(d):  # ascending distance = descending score
            selected = d <= threshold
            tp = np.count_nonzero(y & selected)
            recall, precision = tp / y.sum(), tp / selected.sum()
            ap += (recall - prev_recall) * precision
            prev_recall = recall
        hits = np.flatnonzero(y[np.argsort(d, kind="stable")])
        aps.append(ap)
        first_hits.append(hits[0])
        inps.append(len(hits) / (hits[-1] + 1))
    cmc = np.array([np.mean(np.array(first_hits) <= k) for k in range(max_rank)])
    return {"mAP": np.mean(aps), "cmc": cmc, "mINP": np.mean(inps),
            "num_valid_queries": len(aps)}


def random_problem(rng, nq=40, ng=300, levels=None, dtype=np.float32):
    """Queries with and without matches, same-camera entries, junk (-1) and distractors (0)."""
    g_pids = rng.integers(1, 20, ng)
    g_pids[rng.random(ng) < 0.1] = 0
    g_pids[rng.random(ng) < 0.05] = -1
    q_pids = rng.integers(1, 24, nq)  # pids 20..23 never appear in the gallery
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    if levels is None:
        dist = rng.random((nq, ng))
    else:  # heavy ties, including ties between matches, non-matches and ignored entries
        dist = rng.integers(0, levels, (nq, ng)) / levels
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


def assert_same(got, want):
    assert got["num_valid_queries"] == want["num_valid_queries"]
    assert abs(got["mAP"] - want["mAP"]) < 1e-6
    assert abs(got["mINP"] - want["mINP"]) < 1e-6
    np.testing.assert_allclose(got["cmc"], want["cmc"], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 3, 12])
def test_matches_reference_on_random_matrices(seed, levels):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, levels=levels)
    want = reference(*problem, max_rank=20)
    assert 0 < want["num_valid_queries"] < len(problem[1])  # some queries are skipped
    assert_same(evaluate(*problem, max_rank=20), want)


def test_blocks_of_query_rows_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(7)
    problem = random_problem(rng, nq=50, ng=120, levels=5, dtype=np.float64)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 250)  # 2 rows per block
    assert_same(evaluate(*problem, max_rank=10), reference(*problem, max_rank=10))


def test_scores_equal_negated_distances():
    rng = np.random.default_rng(3)
    dist, *labels = random_problem(rng, levels=6)
    assert_same(evaluate_scores(-dist, *labels), evaluate(dist, *labels))
    assert_same(evaluate_scores(1.0 - dist, *labels), reference(dist, *labels, max_rank=50))


def test_float16_distances():
    rng = np.random.default_rng(4)
    problem = random_problem(rng, dtype=np.float16)
    assert_same(evaluate(*problem, max_rank=5), reference(*problem, max_rank=5))


def test_hand_computed_example():
    # Query 0 (pid 1, cam 0). Gallery: same pid+cam (ignored), negative, match, distractor,
    # match, junk (ignored). Valid order: neg, MATCH, distractor, MATCH.
    g_pids = np.array([1, 2, 1, 0, 1, -1])
    g_cams = np.array([0, 1, 1, 1, 2, 1])
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.05],
                     [0.1, 0.2, 0.3, 0.4, 0.5, 0.05]])
    q_pids, q_cams = np.array([1, 3]), np.array([0, 0])  # query 1 has no match: skipped
    out = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert out["num_valid_queries"] == 1
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1, 1])


def test_hand_computed_ties():
    # A match tied with a negative at 0.2, then a match at 0.5. scikit-learn's AP takes the
    # tie as one threshold: P=1/2 at R=1/2, then P=2/3 at R=1 -> 0.5*0.5 + 0.5*2/3.
    # CMC breaks the tie by column: the negative (column 0) ranks first.
    g_pids, g_cams = np.array([2, 1, 1]), np.array([1, 1, 1])
    out = evaluate(np.array([[0.2, 0.2, 0.5]]), [1], g_pids, [0], g_cams, max_rank=3)
    assert out["mAP"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1])
    assert out["mINP"] == pytest.approx(2 / 3)
    swapped = evaluate(np.array([[0.2, 0.2, 0.5]]), [1], g_pids[[1, 0, 2]], [0], g_cams,
                       max_rank=3)
    assert swapped["mAP"] == pytest.approx(out["mAP"])
    np.testing.assert_array_equal(swapped["cmc"], [1, 1, 1])


def test_max_rank_beyond_gallery_saturates():
    out = evaluate(np.array([[0.3, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=4)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1])


def test_errors():
    with pytest.raises(DataError, match="no query has a matching identity"):
        evaluate(np.zeros((1, 2)), [5], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="does not match"):
        evaluate(np.zeros((2, 2)), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([[np.nan, 0.0]]), [1], [1, 2], [0], [1, 1])
