"""Link people across two cameras of a MOTChallenge-style recording with the tal-reid runtime.

    tal-data synthesize-video data/video             # 2 cameras, 6 people (or real sequences)
    python examples/video_reid.py data/video --model export/demo

Per camera, frames are read with OpenCV (``img1/%06d.jpg`` as a video stream) and the person
boxes of ``det/det.txt`` are cut out and embedded through `ReIDEngine.batcher` (one thread per
camera feeds one micro-batcher, as a live pipeline would). Detections are chained into
tracklets within a camera by box overlap (a plain IoU tracker), the second camera's tracklets
form a `Gallery` (camera, timestamp and tracklet id travel with each crop), and each tracklet
of the first camera is linked to the second camera's tracklet with the best mean
(query crop -> best crop of the tracklet) score, one-to-one, best pairs first. When
``gt/gt.txt`` exists, every tracklet gets the ground-truth id most of its boxes overlap, and the
script prints how many links are right.
"""
from __future__ import annotations

import argparse
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tal_infer import Gallery, ReIDEngine
from tal_infer.features import stack_features


@dataclass
class Tracklet:
    camera: str
    number: int
    frames: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    gt_id: int | None = None

    @property
    def name(self) -> str:
        return f"{self.camera}#{self.number}"


def read_boxes(path: Path, min_conf: float = -np.inf) -> dict[int, list[tuple]]:
    """MOTChallenge rows by frame: (left, top, width, height, id, score)."""
    by_frame: dict[int, list[tuple]] = defaultdict(list)
    if not path.is_file():
        return by_frame
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        v = line.split(",")
        if float(v[6]) >= min_conf:
            by_frame[int(v[0])].append((float(v[2]), float(v[3]), float(v[4]), float(v[5]),
                                        int(float(v[1])), float(v[6])))
    return by_frame


def iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def track_camera(folder: Path, min_conf: float, max_gap: int = 5,
                 min_iou: float = 0.3) -> list[Tracklet]:
    """Read the frames and detections of one camera and chain them into tracklets."""
    detections = read_boxes(folder / "det" / "det.txt", min_conf)
    video = cv2.VideoCapture(str(folder / "img1" / "%06d.jpg"), cv2.CAP_IMAGES)
    tracks: list[Tracklet] = []
    frame_no = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frame_no += 1
        height, width = frame.shape[:2]
        for left, top, w, h, _, _ in detections.get(frame_no, []):
            x0, y0 = max(0, int(round(left))), max(0, int(round(top)))
            x1, y1 = min(width, int(round(left + w))), min(height, int(round(top + h)))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            box = (left, top, w, h)
            live = [t for t in tracks if 0 < frame_no - t.frames[-1] <= max_gap]
            best = max(live, key=lambda t: iou(t.boxes[-1], box), default=None)
            if best is None or iou(best.boxes[-1], box) < min_iou:
                best = Tracklet(folder.name, len(tracks))
                tracks.append(best)
            best.frames.append(frame_no)
            best.boxes.append(box)
            best.crops.append(frame[y0:y1, x0:x1].copy())
    video.release()
    return tracks


def label_with_ground_truth(tracks: list[Tracklet], gt_path: Path) -> None:
    """Each tracklet's gt id = the id most of its boxes overlap (IoU >= 0.5) in gt.txt."""
    gt = read_boxes(gt_path)
    for t in tracks:
        votes = Counter()
        for frame, box in zip(t.frames, t.boxes):
            best = max(gt.get(frame, []), key=lambda g: iou(g[:4], box), default=None)
            if best is not None and iou(best[:4], box) >= 0.5:
                votes[best[4]] += 1
        t.gt_id = votes.most_common(1)[0][0] if votes else None


def sample(crops: list[np.ndarray], count: int) -> list[np.ndarray]:
    index = np.linspace(0, len(crops) - 1, min(count, len(crops))).round().astype(int)
    return [crops[i] for i in index]


def embed_tracklets(engine: ReIDEngine, cameras: dict[str, list[Tracklet]], per_track: int):
    """Embed sampled crops of every tracklet, one feeding thread per camera, one batcher."""
    results: dict[str, list] = {}
    with engine.batcher(max_latency_s=0.02) as batcher:
        def feed(name: str) -> None:
            futures = [(t, [batcher.submit(c) for c in sample(t.crops, per_track)])
                       for t in cameras[name]]
            results[name] = [(t, stack_features([f.result() for f in fs])) for t, fs in futures]

        threads = [threading.Thread(target=feed, args=(name,)) for name in cameras]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return results


def link(engine: ReIDEngine, queries, gallery_tracks, fps: float) -> list[tuple]:
    """One-to-one links (query tracklet, gallery tracklet, score), best pairs first."""
    gallery = Gallery()
    for t, feats in gallery_tracks:
        n = len(next(iter(feats.values())))
        gallery.add(feats, camera=2, timestamp=[f / fps for f in sample(t.frames, n)],
                    meta=t.number)
    by_number = {t.number: t for t, _ in gallery_tracks}
    pairs = []
    for q, feats in queries:
        best: dict[int, list[float]] = defaultdict(list)
        for hits in engine.match(feats, gallery, k=len(gallery)):
            per_track: dict[int, float] = {}
            for m in hits:  # best first, so the first hit of a tracklet is its best crop
                per_track.setdefault(m.meta, m.score)
            for number, score in per_track.items():
                best[number].append(score)
        pairs += [(float(np.mean(s)), q, by_number[n]) for n, s in best.items()]
    pairs.sort(key=lambda p: -p[0])
    used_q, used_g, links = set(), set(), []
    for score, q, g in pairs:
        if q.number not in used_q and g.number not in used_g:
            used_q.add(q.number)
            used_g.add(g.number)
            links.append((q, g, score))
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="folder with one MOT sequence per camera")
    parser.add_argument("--model", type=Path, default=None,
                        help="export bundle (default: the latest under ./export/)")
    parser.add_argument("--cameras", nargs=2, default=None,
                        help="the two camera folders to link (default: the first two)")
    parser.add_argument("--min-conf", type=float, default=0.5, help="detection score cut")
    parser.add_argument("--min-track", type=int, default=5,
                        help="tracklets with fewer detections are ignored (false positives)")
    parser.add_argument("--crops-per-track", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # end-of-sequence notice

    names = args.cameras or sorted(p.name for p in args.recording.iterdir()
                                   if (p / "det" / "det.txt").is_file())[:2]
    if len(names) != 2:
        parser.error(f"{args.recording}: need two camera folders with det/det.txt")
    engine = ReIDEngine(args.model, device=args.device)
    print(f"model {engine.bundle.path} ({engine.extractor.name})")
    cameras, fps = {}, 25.0
    for name in names:
        tracks = [t for t in track_camera(args.recording / name, args.min_conf)
                  if len(t.frames) >= args.min_track]
        label_with_ground_truth(tracks, args.recording / name / "gt" / "gt.txt")
        cameras[name] = tracks
        print(f"{name}: {len(tracks)} tracklets")
    embedded = embed_tracklets(engine, cameras, args.crops_per_track)
    links = link(engine, embedded[names[0]], embedded[names[1]], fps)

    has_gt = any(t.gt_id is not None for ts in cameras.values() for t in ts)
    print(f"\n{'tracklet':>10} {'frames':>9}  ->  {'tracklet':>10} {'frames':>9}  score"
          + ("   gt ids" if has_gt else ""))
    for q, g, score in links:
        line = (f"{q.name:>10} {q.frames[0]:>4}-{q.frames[-1]:<4}  ->  {g.name:>10} "
                f"{g.frames[0]:>4}-{g.frames[-1]:<4}  {score:6.2f}")
        if has_gt:
            line += f"   {q.gt_id} / {g.gt_id} {'ok' if q.gt_id == g.gt_id else 'WRONG'}"
        print(line)
    if has_gt:
        both = ({t.gt_id for t in cameras[names[0]]} & {t.gt_id for t in cameras[names[1]]}) \
            - {None}
        correct = sum(q.gt_id == g.gt_id and q.gt_id is not None for q, g, _ in links)
        print(f"\n{correct} of {len(links)} links correct; {len(both)} people appear in both "
              f"cameras (precision {correct / max(1, len(links)):.0%}, recall "
              f"{len(set(q.gt_id for q, g, _ in links if q.gt_id == g.gt_id) & both)}"
              f"/{len(both)})")


if __name__ == "__main__":
    main()
