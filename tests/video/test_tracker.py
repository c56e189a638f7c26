"""The real tracker (deep-sort-realtime's DeepSORT) runs on a synthetic sequence with our
per-detection descriptors, with and without appearance."""
from __future__ import annotations

import numpy as np

from tal_infer.features import DESCRIPTOR
from tal_infer.video.evaluation import camera_metrics
from tal_infer.video.network import open_network
from tal_infer.video.pipeline import Timings, TrackOptions, camera_tracks, track_camera, \
    tracks_by_frame
from tal_infer.video.tracker import TrackerAdapter, TrackerOptions


def test_deepsort_stores_our_descriptors_as_track_appearance(engine):
    adapter = TrackerAdapter(TrackerOptions(n_init=1))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 24)).astype(np.float32)
    boxes = np.array([[10, 10, 30, 60], [100, 10, 120, 60]], float)
    for _ in range(3):
        matched, confirmed = adapter.update(boxes, np.array([0.9, 0.8]), vectors)
    assert sorted(d for _, d in matched) == [0, 1] and len(confirmed) == 2
    stored = adapter.tracker.tracker.metric.samples  # DeepSORT's appearance gallery per track id
    by_detection = {d: t for t, d in matched}
    for d in (0, 1):
        np.testing.assert_array_equal(np.asarray(stored[str(by_detection[d])])[-1], vectors[d])


def test_tracker_runs_on_a_synthetic_sequence_with_our_features(engine, tiny_network):
    camera = open_network(tiny_network)[0]
    timings = Timings()
    results = {}
    for appearance in (True, False):
        options = TrackOptions(min_conf=0.5, tracker=TrackerOptions(appearance=appearance))
        result = track_camera(engine, camera, options, timings)
        assert result.frames == camera.length and result.tracklets
        ids = {t.key: t.track for t in result.tracklets}
        tracks = tracks_by_frame(camera_tracks(result, ids))
        results[appearance] = camera_metrics(camera.ground_truth, tracks)
    assert DESCRIPTOR in engine.bundle.output_shapes
    assert timings.seconds["extraction"] > 0 and timings.seconds["tracking"] > 0
    # three people crossing a 160-pixel frame in 16 frames: motion alone loses them now and then
    assert results[True]["IDF1"] > 0.6 and results[True]["MOTA"] > 0.5
    assert results[False]["MOTA"] > 0.5
