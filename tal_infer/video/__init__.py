"""Video analytics on camera networks: detections from frames, tracklets, a real tracker fed with
our features, cross-camera association, MOTChallenge I/O, reports and standard MOT metrics.

Modules by job (docs/video.md):

| module | what |
|---|---|
| `boxes` | `embed_boxes`: xyxy detections cut from frames (clipped, views, batched) |
| `frames`, `mot`, `network` | frames (``img1/`` or a video file), det/gt files, camera folders |
| `quality`, `tracklets` | crop quality; tracklets, crop samples, tracklet scores, `TrackletGallery` |
| `tracker` | DeepSORT (deep-sort-realtime) with our per-detection vectors |
| `association` | global identities: constraints, transition windows, offline and online modes |
| `calibration` | the open-set threshold, calibrated on training images |
| `pipeline`, `cli` | tracking + association over a network; ``tal-track`` |
| `report`, `evaluation` | the HTML report; TrackEval / scikit-learn metrics |

The tracker, TrackEval and scikit-learn come with the ``video`` extra; the rest needs only the
runtime core.
"""
from __future__ import annotations

from .boxes import BoxFeatures, SkippedBox, embed_boxes
from .tracklets import (AGGREGATIONS, Tracklet, TrackletFeatures, TrackletGallery,
                        descriptor_scores, tracklet_scores)

__all__ = ["AGGREGATIONS", "BoxFeatures", "SkippedBox", "Tracklet", "TrackletFeatures",
           "TrackletGallery", "descriptor_scores", "embed_boxes", "tracklet_scores"]
