"""Tracking and association measured with established libraries, never our own counting.

- per camera: MOTA and ID switches (CLEAR MOT) and IDF1 (identity metrics) from TrackEval's
  `CLEAR` and `Identity` metrics, boxes matched at IoU >= 0.5 (TrackEval's IoU function);
- across cameras: IDF1, IDP and IDR of TrackEval's `Identity` over all cameras at once: the
  cameras' timelines are concatenated into one sequence with the network-wide ground-truth ids
  and the predicted global ids (the multi-camera IDF1 of the MTMC benchmarks: a person counts as
  one identity in every camera);
- links: precision and recall of "these two tracklets are one person" over all tracklet pairs,
  from scikit-learn's `pair_confusion_matrix` on (ground-truth id, global id) per tracklet.
  A tracklet's ground-truth id is the one most of its boxes match at IoU >= 0.5 (TrackEval's
  IoU again); tracklets matching none are false positives and link with no one.

Inputs are ``{frame: (ids [n], xyxy boxes [n, 4])}`` per camera (`mot.read_ground_truth`, and
tracks in the same form).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import TalError

Boxes = Mapping[int, tuple[np.ndarray, np.ndarray]]
IOU_THRESHOLD = 0.5


def _trackeval():
    try:
        import trackeval
    except ImportError:
        raise TalError("evaluation needs TrackEval: pip install 'tal-reid[video]'") from None
    return trackeval


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of xyxy boxes, computed by TrackEval."""
    dataset = _trackeval().datasets._base_dataset._BaseDataset
    return dataset._calculate_box_ious(np.asarray(a, float).reshape(-1, 4),
                                       np.asarray(b, float).reshape(-1, 4),
                                       box_format="x0y0x1y1")


def _sequence(timeline: Sequence[tuple[Boxes, Boxes, int]]) -> dict:
    """TrackEval's per-sequence data over (ground truth, tracks, frame) timesteps, ids
    renumbered 0.. as TrackEval requires."""
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    steps = [(gt.get(f, empty), tr.get(f, empty)) for gt, tr, f in timeline]
    gt_ids = {i: n for n, i in enumerate(sorted({int(i) for (g, _), _ in steps for i in g}))}
    tr_ids = {i: n for n, i in enumerate(sorted({int(i) for _, (t, _) in steps for i in t}))}
    return {
        "num_timesteps": len(steps),
        "gt_ids": [np.array([gt_ids[int(i)] for i in g], int) for (g, _), _ in steps],
        "tracker_ids": [np.array([tr_ids[int(i)] for i in t], int) for _, (t, _) in steps],
        "similarity_scores": [box_iou(gb, tb) for (_, gb), (_, tb) in steps],
        "num_gt_ids": len(gt_ids), "num_tracker_ids": len(tr_ids),
        "num_gt_dets": sum(len(g) for (g, _), _ in steps),
        "num_tracker_dets": sum(len(t) for _, (t, _) in steps),
    }


def _metrics(data: dict) -> dict[str, float]:
    te = _trackeval()
    quiet = {"PRINT_CONFIG": False, "THRESHOLD": IOU_THRESHOLD}
    clear = te.metrics.CLEAR(quiet).eval_sequence(data)
    ident = te.metrics.Identity(quiet).eval_sequence(data)
    return {"MOTA": float(clear["MOTA"]), "IDSW": int(clear["IDSW"]),
            "IDF1": float(ident["IDF1"]), "IDP": float(ident["IDP"]),
            "IDR": float(ident["IDR"]), "gt_dets": data["num_gt_dets"],
            "dets": data["num_tracker_dets"]}


def _frames(*per_frame: Boxes) -> list[int]:
    last = max((max(p) for p in per_frame if p), default=0)
    return list(range(1, last + 1))


def camera_metrics(gt: Boxes, tracks: Boxes) -> dict[str, float]:
    """MOTA, IDSW, IDF1, IDP, IDR of one camera's tracks (module doc)."""
    return _metrics(_sequence([(gt, tracks, f) for f in _frames(gt, tracks)]))


def cross_camera_metrics(cameras: Sequence[tuple[Boxes, Boxes]]) -> dict[str, float]:
    """IDF1, IDP, IDR (and MOTA, IDSW) over all cameras, tracks carrying global ids."""
    timeline = [(gt, tr, f) for gt, tr in cameras for f in _frames(gt, tr)]
    return _metrics(_sequence(timeline))


def tracklet_truth(gt: Boxes, frames: Sequence[int], boxes: Sequence[np.ndarray]
                   ) -> int | None:
    """The ground-truth id most of a tracklet's boxes match (IoU >= 0.5), None if none."""
    votes: dict[int, int] = {}
    for frame, box in zip(frames, boxes):
        ids, gt_boxes = gt.get(frame, (np.zeros(0, np.int64), np.zeros((0, 4))))
        if len(ids):
            iou = box_iou(np.asarray(box)[None], gt_boxes)[0]
            best = int(np.argmax(iou))
            if iou[best] >= IOU_THRESHOLD:
                votes[int(ids[best])] = votes.get(int(ids[best]), 0) + 1
    return max(votes, key=lambda i: (votes[i], -i)) if votes else None


def link_precision_recall(truth: Sequence[int | None], predicted: Sequence[int]
                          ) -> dict[str, float]:
    """Precision and recall of tracklet pairs put in one identity (scikit-learn's pair
    confusion matrix); tracklets without a ground-truth id are singletons."""
    try:
        from sklearn.metrics.cluster import pair_confusion_matrix
    except ImportError:
        raise TalError("link metrics need scikit-learn: pip install 'tal-reid[video]'") \
            from None
    labels = [f"gt{t}" if t is not None else f"fp{i}" for i, t in enumerate(truth)]
    (_, fp), (fn, tp) = pair_confusion_matrix(labels, list(predicted))
    return {"precision": float(tp / (tp + fp)) if tp + fp else 0.0,
            "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
            "true_links": int((tp + fn) // 2), "predicted_links": int((tp + fp) // 2)}
