"""Python API: embedding of OpenCV crops, the in-memory Gallery, match, and the micro-batcher."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from tal_infer import Gallery, ReIDEngine
from tal_infer.errors import TalError
from tal_infer.images import ImageError
from tal_infer.features import match_layout


@pytest.fixture(scope="module")
def engine(fake_bundle):
    return ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu", batch_size=4)


def _crops(n, rng, size=(40, 20)):
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_embed_equals_the_graph_on_resized_crops(engine, fake_bundle):
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
             for h, w in rng.integers(10, 90, (7, 2))]  # any size; batches of 4 and 3
    got = engine.embed(crops)
    session = ort.InferenceSession(str(fake_bundle / "extractor.onnx"))
    images = np.stack([cv2.resize(c, (16, 32), interpolation=cv2.INTER_LINEAR) for c in crops])
    names = [o.name for o in session.get_outputs()]
    for name, want in zip(names, session.run(names, {"images": images})):
        np.testing.assert_allclose(got[name], match_layout(want), rtol=0, atol=1e-6)
        assert got[name].flags.c_contiguous


def test_gray_bgra_and_16bit_crops_embed_as_their_bgr_version(engine):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    gray = bgr[:, :, 0]
    bgra = np.dstack([bgr, np.full((40, 20), 7, np.uint8)])
    deep = bgr.astype(np.uint16) * 257
    feats = engine.embed([bgr, gray, bgra, deep])
    want = engine.embed([bgr, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)])
    for key, value in feats.items():
        np.testing.assert_allclose(value[[0, 2, 3]], want[key][[0, 0, 0]], atol=1e-6)
        np.testing.assert_allclose(value[1], want[key][1], atol=1e-6)


def test_tiny_crop_is_refused_with_its_index(engine):
    rng = np.random.default_rng(0)
    with pytest.raises(ImageError, match="crop 1: image too small"):
        engine.embed([_crops(1, rng)[0], np.zeros((5, 20, 3), np.uint8)])


def test_gallery_add_remove_and_match_carry_metadata(engine):
    rng = np.random.default_rng(3)
    crops = _crops(6, rng)
    feats = engine.embed(crops)
    gallery = Gallery()
    ids = gallery.add(feats, camera=[0, 0, 1, 1, 2, 2], timestamp=np.arange(6) * 0.5,
                      meta=[{"track": i} for i in range(6)])
    assert ids == list(range(6)) and len(gallery) == 6
    scores = engine.scores(feats, feats)
    hits = engine.match(feats, gallery, k=3)
    for qi, row in enumerate(hits):
        order = np.argsort(-scores[qi], kind="stable")[:3]
        assert [m.id for m in row] == [ids[c] for c in order]
        np.testing.assert_allclose([m.score for m in row], scores[qi, order], atol=1e-5)
        assert all(m.meta == {"track": m.id} and m.timestamp == m.id * 0.5 for m in row)
    cross = engine.match(feats, gallery, k=6, query_cameras=[0, 0, 1, 1, 2, 2])
    assert all(m.camera != qc for row, qc in zip(cross, [0, 0, 1, 1, 2, 2]) for m in row)
    assert all(len(row) == 4 for row in cross)
    assert gallery.remove([1, 4, 99]) == 2
    assert len(gallery) == 4
    after = engine.match(feats, gallery, k=6)
    assert all({m.id for m in row} == {0, 2, 3, 5} for row in after)
    keep = [0, 2, 3, 5]
    np.testing.assert_allclose([[m.score for m in sorted(row)] for row in after],
                               scores[:, keep], atol=1e-5)
    more = gallery.add(engine.embed(crops[:1]), camera=3)
    assert more == [6]
    with pytest.raises(TalError, match="2 camera values for 1 items"):
        gallery.add(engine.embed(crops[:1]), camera=[1, 2])


def test_empty_gallery_matches_nothing(engine):
    feats = engine.embed(_crops(2, np.random.default_rng(0)))
    assert engine.match(feats, Gallery(), k=3) == [[], []]


def test_batcher_gives_each_thread_its_own_features_in_full_batches(engine):
    rng = np.random.default_rng(4)
    crops = _crops(12, rng)
    want = engine.embed(crops)
    seen = []
    original = engine.extractor

    def recording(images):
        seen.append(len(images))
        return original(images)

    engine.extractor = recording
    results = [None] * len(crops)
    try:
        with engine.batcher(max_batch=4, max_latency_s=0.5) as batcher:
            def work(i):
                results[i] = batcher(crops[i], timeout=10)
            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(crops))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        engine.extractor = original
    for i, feats in enumerate(results):
        for key, value in feats.items():
            np.testing.assert_allclose(value[0], want[key][i], atol=1e-6)
    assert sorted(seen, reverse=True)[:2] == [4, 4] and sum(seen) == 12


def test_batcher_runs_a_lone_crop_at_its_latency_deadline(engine, fake_clock):
    crop = _crops(1, np.random.default_rng(5))[0]
    with engine.batcher(max_batch=64, max_latency_s=0.05) as batcher:
        pending = batcher.submit(crop)  # at t = 0
        fake_clock.set(0.0499)
        fake_clock.wait_for_worker()
        assert not pending.done()
        fake_clock.set(0.05)
        feats = pending.result(10)
    for key, value in engine.embed([crop]).items():
        np.testing.assert_array_equal(feats[key], value)
