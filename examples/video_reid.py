"""Track people in every camera of a MOTChallenge-style recording and link them across cameras,
with the tal-reid video API (what `tal-track run` does, as a short script).

    tal-data synthesize-video data/video                       # 2 cameras, 6 people
    tal-track calibrate --images data/synthetic/domain-a/bounding_box_train   # once per model
    python examples/video_reid.py data/video --model export/demo

Per camera, DeepSORT tracks the detections of ``det/det.txt`` (with the TAL descriptor as its
appearance cue when the bundle has one); each tracklet keeps a small sample of its best crops;
the tracklets of all cameras are then linked into global identities by their TAL tracklet
scores, never joining two tracklets of one camera that overlap in time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tal_infer import ReIDEngine
from tal_infer.features import DESCRIPTOR
from tal_infer.video.calibration import default_path, load_calibration
from tal_infer.video.network import open_network
from tal_infer.video.pipeline import TrackOptions, associate, track_camera, tracklet_features
from tal_infer.video.tracker import TrackerOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="folder with one MOT sequence per camera")
    parser.add_argument("--model", type=Path, default=None, help="export bundle")
    parser.add_argument("--threshold", type=float, default=None,
                        help="open-set threshold (default: the bundle's calibration file)")
    args = parser.parse_args()

    engine = ReIDEngine(args.model)
    threshold = args.threshold
    if threshold is None:
        threshold = load_calibration(default_path(engine.bundle.path),
                                     engine.bundle.fingerprint).threshold("tal")
    appearance = DESCRIPTOR in engine.bundle.output_shapes
    options = TrackOptions(tracker=TrackerOptions(appearance=appearance))
    cameras = open_network(args.recording)
    results = [track_camera(engine, camera, options, progress=True) for camera in cameras]
    tracklets = [t for r in results for t in r.tracklets]
    ids = associate(tracklet_features(engine, results), engine.scores, threshold)

    for gid in sorted(set(ids)):
        seen = [f"{cameras[t.camera].name} frames {t.start}-{t.end}"
                for t, g in zip(tracklets, ids) if g == gid]
        print(f"person {gid}: " + "; ".join(seen))


if __name__ == "__main__":
    main()
