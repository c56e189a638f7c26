"""Same-camera exclusion with unknown cameras (-1) on both sides: a pair is left out exactly when
``(q == g) & (q >= 0)``, so an unknown camera is never excluded, whichever side it is on; in
exhaustive ranking and in two-stage retrieval's stage 1 alike.

Expected masks are written out by hand here, never computed with the function under test.
"""
from __future__ import annotations

import numpy as np

from tal_infer import Gallery, ReIDEngine
from tal_infer.bundle import load_bundle
from tal_infer.candidates import CandidateSearch
from tal_infer.features import feature_chunks
from tal_infer.scoring import Scorer, exclude_same_camera, rank_gallery

from optional_modules import require
from runtime_fixtures import person_crop, random_features

Q_CAMS = np.array([0, 1, -1, 2])
G_CAMS = np.array([0, 1, -1, 0, 2, -1, 3])
# Q_CAMS[i] == G_CAMS[j] with a known (>= 0) query camera; -1 == -1 is no exclusion.
EXCLUDED = np.array([
    [1, 0, 0, 1, 0, 0, 0],   # camera 0: gallery columns 0 and 3
    [0, 1, 0, 0, 0, 0, 0],   # camera 1: column 1
    [0, 0, 0, 0, 0, 0, 0],   # unknown query camera: nothing, not even the unknown columns 2, 5
    [0, 0, 0, 0, 1, 0, 0],   # camera 2: column 4
], dtype=bool)


def test_exclusion_mask_written_out():
    scores = np.arange(28, dtype=np.float32).reshape(4, 7)
    exclude_same_camera(scores, Q_CAMS, G_CAMS)
    inf = np.inf
    want = np.array([[-inf, 1, 2, -inf, 4, 5, 6],
                     [7, -inf, 9, 10, 11, 12, 13],
                     [14, 15, 16, 17, 18, 19, 20],
                     [21, 22, 23, 24, -inf, 26, 27]], dtype=np.float32)
    np.testing.assert_array_equal(scores, want)


def test_streaming_ranking_keeps_exactly_the_allowed_columns(fake_bundle):
    bundle = load_bundle(fake_bundle)
    rng = np.random.default_rng(1)
    q, g = random_features(bundle, 4, rng), random_features(bundle, 7, rng)
    scorer = Scorer(bundle)
    full = scorer.scores(q, g)
    ranking = rank_gallery(scorer, q, feature_chunks(g, 3), 7, k=7, cameras=(Q_CAMS, G_CAMS))
    for qi, row in enumerate(ranking.topk.rows()):
        allowed = np.flatnonzero(~EXCLUDED[qi])
        want = allowed[np.argsort(-full[qi, allowed], kind="stable")]
        assert [c for c, _ in row] == want.tolist(), qi
        np.testing.assert_allclose([s for _, s in row], full[qi, want], rtol=0,
                                   atol=1e-5 * (1 + np.abs(full).max()))  # chunked fp32 sums


def test_engine_match_keeps_unknown_cameras_on_both_sides(fake_bundle):
    engine = ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(2)
    q, g = random_features(engine.bundle, 4, rng), random_features(engine.bundle, 7, rng)
    gallery = Gallery()
    ids = gallery.add(g, camera=[None if c < 0 else int(c) for c in G_CAMS])
    query_cameras = [None if c < 0 else int(c) for c in Q_CAMS]
    hits = engine.match(q, gallery, k=7, query_cameras=query_cameras)
    for qi, row in enumerate(hits):
        assert sorted(m.id for m in row) == [ids[c] for c in np.flatnonzero(~EXCLUDED[qi])], qi
        assert all(m.camera is None for m in row if m.id in (ids[2], ids[5]))


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_stage_one_keeps_exactly_the_allowed_columns():
    require("faiss")
    rng = np.random.default_rng(17)
    gallery, queries = unit_rows(7, 16, rng), unit_rows(4, 16, rng)
    search = CandidateSearch(gallery)
    everything = search.search(queries, 7, exclude=(Q_CAMS, G_CAMS))
    for qi, cols in enumerate(everything):
        assert sorted(cols.tolist()) == np.flatnonzero(~EXCLUDED[qi]).tolist(), qi
    sims = queries @ gallery.T
    for qi, cols in enumerate(search.search(queries, 2, exclude=(Q_CAMS, G_CAMS))):
        allowed = np.flatnonzero(~EXCLUDED[qi])
        assert cols.tolist() == allowed[np.argsort(-sims[qi, allowed])][:2].tolist(), qi


def test_engine_two_stage_match_keeps_unknown_cameras_on_both_sides(fake_bundle_v2):
    require("faiss")
    engine = ReIDEngine(fake_bundle_v2, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(18)
    q = engine.embed([person_crop(i, rng) for i in range(4)])  # maps and the descriptor
    g = engine.embed([person_crop(i % 3, rng) for i in range(7)])
    gallery = Gallery()
    ids = gallery.add(g, camera=[None if c < 0 else int(c) for c in G_CAMS])
    query_cameras = [None if c < 0 else int(c) for c in Q_CAMS]
    for prerank in (0, 7):  # the DI pre-rank's stage 1 too
        hits = engine.match(q, gallery, k=7, query_cameras=query_cameras, candidates=7,
                            prerank=prerank)
        for qi, row in enumerate(hits):
            assert sorted(m.id for m in row) == [ids[c] for c in np.flatnonzero(~EXCLUDED[qi])]
