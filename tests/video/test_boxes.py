"""`embed_boxes`: detections cut from frames equal crop-by-crop embedding, edge cases included."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer.errors import TalError
from tal_infer.features import DESCRIPTOR
from tal_infer.video.boxes import embed_boxes, pixel_bounds


def _frame(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _assert_rows_equal(features, reference) -> None:
    assert set(features) == set(reference)
    for k in reference:
        np.testing.assert_allclose(features[k], reference[k], rtol=1e-5, atol=1e-6)


def test_pixel_bounds_clip_round_outwards_and_say_why():
    assert pixel_bounds((-5.5, 10.2, 20.1, 50.0), 80, 60) == (0, 10, 21, 50)
    assert pixel_bounds((70.0, 40.0, 95.0, 75.0), 80, 60) == (70, 40, 80, 60)
    assert "outside" in pixel_bounds((90, 10, 120, 50), 80, 60)
    assert "no area" in pixel_bounds((10, 10, 10, 50), 80, 60)
    assert "no area" in pixel_bounds((30, 10, 20, 50), 80, 60)
    assert "not finite" in pixel_bounds((np.nan, 10, 20, 50), 80, 60)
    assert "minimum side" in pixel_bounds((0, 0, 5, 40), 80, 60)
    assert "minimum side" in pixel_bounds((76, 0, 90, 40), 80, 60)  # 4 px left inside


def test_edge_cases_equal_crop_by_crop(engine):
    frame = _frame(0)
    boxes = np.array([[10, 5, 30, 45],         # inside
                      [-8, -4, 15.5, 30],      # clipped at the top-left -> [0:30, 0:16]
                      [70.2, 20, 120, 70],     # clipped at the bottom-right -> [20:60, 70:80]
                      [100, 10, 140, 50],      # outside
                      [40, 20, 40, 50],        # zero area
                      [5, 5, 9, 50]])          # 4 px wide
    out = embed_boxes(engine, frame, boxes)
    assert out.kept == [(0, 0), (0, 1), (0, 2)]
    assert [(s.frame, s.box) for s in out.skipped] == [(0, 3), (0, 4), (0, 5)]
    assert "outside" in out.skipped[0].reason and "no area" in out.skipped[1].reason
    reference = engine.embed([frame[5:45, 10:30], frame[0:30, 0:16], frame[20:60, 70:80]])
    _assert_rows_equal(out.features, reference)


def test_empty_box_list_gives_empty_features(engine):
    out = embed_boxes(engine, _frame(1), np.zeros((0, 4)))
    assert out.kept == [] and out.skipped == []
    assert set(out.features) == set(engine.bundle.output_shapes)
    assert all(len(v) == 0 for v in out.features.values())


def test_many_frames_in_one_batch_equal_crop_by_crop(engine):
    frames = [_frame(s) for s in range(5)]
    rng = np.random.default_rng(7)
    boxes = []
    for i in range(5):
        x0, y0 = rng.uniform(-10, 50, 3), rng.uniform(-10, 20, 3)
        boxes.append(np.c_[x0, y0, x0 + rng.uniform(12, 40, 3), y0 + rng.uniform(20, 50, 3)])
    boxes[2] = np.zeros((0, 4))  # a frame without detections
    out = embed_boxes(engine, frames, boxes)  # batch_size 4: batches span frames
    crops = []
    for f, b in out.kept:
        x0, y0, x1, y1 = pixel_bounds(boxes[f][b], 80, 60)
        crops.append(frames[f][y0:y1, x0:x1])
    assert len(out.kept) + len(out.skipped) == 12 and len(out.kept) >= 8
    assert [f for f, _ in out.kept] == sorted(f for f, _ in out.kept)
    # crop by crop, one crop per call
    one_by_one = [engine.embed([c]) for c in crops]
    reference = {k: np.concatenate([o[k] for o in one_by_one]) for k in one_by_one[0]}
    _assert_rows_equal(out.features, reference)


def test_descriptor_only_output(engine):
    frame = _frame(3)
    boxes = np.array([[0, 0, 20, 40], [30, 10, 60, 55]])
    out = embed_boxes(engine, frame, boxes, outputs=[DESCRIPTOR])
    assert list(out.features) == [DESCRIPTOR]
    full = embed_boxes(engine, frame, boxes)
    np.testing.assert_array_equal(out.features[DESCRIPTOR], full.features[DESCRIPTOR])
    with pytest.raises(TalError, match="no output nope"):
        embed_boxes(engine, frame, boxes, outputs=["nope"])


def test_frames_and_box_lists_must_pair(engine):
    with pytest.raises(TalError, match="2 frames but 1 box lists"):
        embed_boxes(engine, [_frame(0), _frame(1)], [np.zeros((0, 4))])
