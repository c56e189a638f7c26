"""Tracklet scores against a written-out reference, bounded crop samples, and tracklet
galleries built from an in-memory `Gallery` and from a `GalleryIndex`."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tal_infer import Gallery
from tal_infer.errors import TalError
from tal_infer.features import DESCRIPTOR
from tal_infer.video.tracklets import (CropSample, TrackletFeatures, TrackletGallery,
                                       descriptor_scores, from_gallery, from_index,
                                       tracklet_scores)


def _desc(*vectors) -> dict:
    return {DESCRIPTOR: np.array(vectors, np.float32)}


A = TrackletFeatures("a", 0, 0.0, 1.0, _desc((1, 0), (0, 1)))
B = TrackletFeatures("b", 1, 2.0, 3.0, _desc((1, 0), (0.6, 0.8), (0, -1)))
# crop pairs (rows a1, a2; columns b1, b2, b3): [[1, 0.6, 0], [0, 0.8, -1]]
REFERENCE = {"mean": 1.4 / 6,      # all six pairs
             "max": 1.0,           # a1-b1
             "top-mean": 0.9,      # best min(2, 3) = 2 pairs: 1 and 0.8
             "mutual-best": 0.75}  # rows' best [1, 0.8] -> 0.9, columns' [1, 0.8, 0] -> 0.6


@pytest.mark.parametrize("aggregate", sorted(REFERENCE))
def test_tracklet_score_reference(aggregate):
    scores = tracklet_scores(descriptor_scores, [A, B], [B, A], aggregate)
    assert scores.shape == (2, 2)
    assert scores[0, 0] == pytest.approx(REFERENCE[aggregate], abs=1e-6)
    assert scores[1, 1] == pytest.approx(REFERENCE[aggregate], abs=1e-6)  # B vs A: transposed


def test_unknown_aggregation_is_refused():
    with pytest.raises(TalError, match="unknown aggregation"):
        tracklet_scores(descriptor_scores, [A], [B], "median")


def test_tal_tracklet_scores_aggregate_each_block(engine):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(7)]
    feats = engine.embed(crops)
    part = lambda rows: {k: v[rows] for k, v in feats.items()}  # noqa: E731
    t1 = TrackletFeatures(1, 0, 0, 1, part([0, 1, 2]))
    t2 = TrackletFeatures(2, 1, 0, 1, part([3, 4]))
    t3 = TrackletFeatures(3, 1, 0, 1, part([5, 6]))
    scores = tracklet_scores(engine.scores, [t1], [t2, t3], "mean")
    for j, t in enumerate((t2, t3)):
        assert scores[0, j] == pytest.approx(engine.scores(t1.features, t.features).mean(),
                                             rel=1e-5)


def test_crop_sample_keeps_the_best_crops_spread_in_time():
    sample = CropSample(size=3, min_gap=5)
    crop = np.zeros((20, 10, 3), np.uint8)
    for frame, quality in [(1, 0.5), (2, 0.9), (3, 0.4), (10, 0.3), (20, 0.6), (30, 0.7),
                           (31, 0.2)]:
        sample.offer(frame, quality, crop)
    # frame 2 replaced 1 (closer than 5 frames, better); 3 and 31 lost to their neighbours;
    # 30 then replaced the worst kept crop (10)
    assert sorted(zip(sample.frames, sample.quality)) == [(2, 0.9), (20, 0.6), (30, 0.7)]
    assert all(c is not crop for c in sample.crops)  # copies, not views of the frame


def _entries(engine):
    rng = np.random.default_rng(1)
    crops = [np.full((40, 20, 3), 40 * (i // 3), np.uint8)
             + rng.integers(0, 30, (40, 20, 3), dtype=np.uint8) for i in range(9)]
    metas = [{"track": i // 3, "start": float(i // 3), "end": float(i // 3) + 0.5,
              "quality": float(i % 3)} for i in range(9)]
    return crops, [i // 3 % 2 for i in range(9)], metas


def test_tracklet_gallery_from_in_memory_gallery(engine):
    crops, cameras, metas = _entries(engine)
    gallery = Gallery()
    gallery.add(engine.embed(crops), camera=cameras, meta=metas)
    tracklets = from_gallery(gallery, limit=2)
    assert sorted(t.key for t in tracklets) == [(0, 0), (0, 2), (1, 1)]
    first = next(t for t in tracklets if t.key == (0, 0))
    assert (first.start, first.end) == (0.0, 0.5)
    np.testing.assert_array_equal(first.features[DESCRIPTOR],  # the two best by quality
                                  engine.embed([crops[2], crops[1]])[DESCRIPTOR])
    hits = TrackletGallery(engine.scores, "mean", tracklets).query(first, k=5)
    assert [t.key for t, _ in hits] != [] and all(t.key != first.key for t, _ in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    other = TrackletGallery(engine.scores, "mean", tracklets).query(first, other_cameras=True)
    assert [t.key for t, _ in other] == [(1, 1)]


def test_tracklet_gallery_from_gallery_index(engine, tmp_path):
    crops, cameras, metas = _entries(engine)
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / "crops" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(paths[-1]), crop)
    meta = {str(p): {"camera": c, **m} for p, c, m in zip(paths, cameras, metas)}
    index = engine.open_index(tmp_path / "index")
    engine_meta = lambda p: meta[str(p)]  # noqa: E731
    index.sync(paths, lambda batch: engine.embed([cv2.imread(str(p)) for p in batch]),
               engine_meta)
    from_idx = {t.key: t for t in from_index(index.load(), limit=2)}
    gallery = Gallery()
    gallery.add(engine.embed(crops), camera=cameras, meta=metas)
    in_memory = {t.key: t for t in from_gallery(gallery, limit=2)}
    assert from_idx.keys() == in_memory.keys()
    keys = sorted(from_idx)
    np.testing.assert_allclose(
        tracklet_scores(engine.scores, [from_idx[k] for k in keys], [from_idx[k] for k in keys]),
        tracklet_scores(engine.scores, [in_memory[k] for k in keys],
                        [in_memory[k] for k in keys]), rtol=1e-5)


def test_occlusion_counts_only_boxes_in_front():
    from tal_infer.video.quality import occlusion

    # B's feet (y 30) are lower than A's (y 20): B stands in front and hides half of A
    np.testing.assert_allclose(occlusion(np.array([[0, 0, 10, 20], [5, 0, 15, 30]])), [0.5, 0.0])


def test_crop_quality_prefers_large_sharp_visible_crops():
    from tal_infer.video.quality import crop_quality

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (9, 9), 4)
    assert crop_quality(sharp, 0.0, 64) > crop_quality(blurred, 0.0, 64)
    assert crop_quality(sharp, 0.0, 64) > crop_quality(sharp[:32], 0.0, 64)  # smaller
    assert crop_quality(sharp, 0.5, 64) == pytest.approx(crop_quality(sharp, 0.0, 64) / 2)
