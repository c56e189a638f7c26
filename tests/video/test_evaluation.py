"""The metrics libraries (TrackEval, scikit-learn) give hand-checkable numbers on hand-made
cases."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer.video.evaluation import (camera_metrics, cross_camera_metrics,
                                        link_precision_recall, tracklet_truth)

P1, P2, FAR = [0, 0, 10, 20], [50, 0, 60, 20], [100, 100, 110, 120]


def _frames(rows):
    out = {}
    for frame, tid, box in rows:
        ids, boxes = out.get(frame, ([], []))
        out[frame] = (ids + [tid], boxes + [box])
    return {f: (np.array(i), np.array(b, float)) for f, (i, b) in out.items()}


GT = _frames([(f, 1, P1) for f in range(1, 5)] + [(f, 2, P2) for f in range(1, 5)])
# person 1: id 10 in frames 1-2, id 11 in 3-4 (one switch); person 2: id 20, missed in frame 4;
# one false positive in frame 1
TRACKS = _frames([(1, 10, P1), (2, 10, P1), (3, 11, P1), (4, 11, P1),
                  (1, 20, P2), (2, 20, P2), (3, 20, P2), (1, 30, FAR)])


def test_clear_and_identity_metrics_hand_case():
    m = camera_metrics(GT, TRACKS)
    # 8 gt boxes, 7 matched: FN 1, FP 1, IDSW 1 -> MOTA = 1 - 3/8
    assert m["MOTA"] == pytest.approx(1 - 3 / 8) and m["IDSW"] == 1
    # best one-to-one identities: 1 <-> 10 (or 11): 2 boxes, 2 <-> 20: 3 -> IDTP 5 of 8 and 8
    assert m["IDF1"] == pytest.approx(5 / 8) and m["IDP"] == pytest.approx(5 / 8)
    assert m["IDR"] == pytest.approx(5 / 8)


def test_cross_camera_idf1_hand_case():
    gt_a, gt_b = _frames([(1, 1, P1), (2, 1, P1)]), _frames([(1, 1, P2), (2, 1, P2)])
    unlinked = cross_camera_metrics([(gt_a, _frames([(1, 1, P1), (2, 1, P1)])),
                                     (gt_b, _frames([(1, 2, P2), (2, 2, P2)]))])
    assert unlinked["IDF1"] == pytest.approx(0.5)  # IDTP 2, IDFN 2, IDFP 2
    linked = cross_camera_metrics([(gt_a, _frames([(1, 7, P1), (2, 7, P1)])),
                                   (gt_b, _frames([(1, 7, P2), (2, 7, P2)]))])
    assert linked["IDF1"] == pytest.approx(1.0)


def test_link_precision_recall_hand_case():
    # pairs: (0, 1) right; (0, 2) and (1, 2) wrong; tracklet 3 has no ground truth
    m = link_precision_recall([1, 1, 2, None], [0, 0, 0, 1])
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1.0)
    assert (m["true_links"], m["predicted_links"]) == (1, 3)


def test_tracklet_truth_is_the_majority_match():
    frames, boxes = [1, 2, 3], [P1, P1, P2]
    assert tracklet_truth(GT, frames, boxes) == 1
    assert tracklet_truth(GT, [1], [FAR]) is None
