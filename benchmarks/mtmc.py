"""Multi-camera tracking and cross-camera association, measured with TrackEval and scikit-learn.

On a synthetic network from `tal-data synthesize-video` made hard (default: 4 cameras, 30
people, each passing every camera twice, so people leave and re-enter; crowds that occlude each
other; side, front and back views and a domain style per camera), with a TAL bundle that has the
global descriptor:

1. per camera, DeepSORT without appearance vs with the TAL descriptor: IDF1, ID switches, MOTA;
2. the tracklet-score aggregations compared by the average precision of "same person" over all
   cross-camera tracklet pairs (threshold-free; scikit-learn), which is how the default was
   chosen;
3. across cameras (tracklets of the descriptor tracker): association by descriptor scores vs
   TAL tracklet scores vs TAL + transition-time windows: cross-camera IDF1 / IDP / IDR
   (TrackEval) and link precision / recall (scikit-learn); open-set thresholds calibrated on the
   training images (`tal-track calibrate`), transition windows learned from the ground truth of
   a second network of the same layout (another seed), never from the evaluated one;
4. throughput on this machine: detections/s of `embed_boxes` (descriptor only and all maps) per
   extractor backend, frames/s of the whole pipeline and the share of each stage.

Its last line: ``mtmc: idf1_camera_no_appearance=A idf1_camera_tal=B idf1_cross_descriptor=C
idf1_cross_tal=D idf1_cross_tal_time=E`` (percent; camera IDF1s are means over the cameras).

    python benchmarks/mtmc.py --model export/demo-descriptor \\
        --train-images data/synthetic/domain-a/bounding_box_train ... --work runs/mtmc
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from tal_infer import ReIDEngine  # noqa: E402
from tal_infer.errors import TalError  # noqa: E402
from tal_infer.features import DESCRIPTOR  # noqa: E402
from tal_infer.video.association import TransitionWindows  # noqa: E402
from tal_infer.video.boxes import embed_boxes  # noqa: E402
from tal_infer.video.calibration import calibrate  # noqa: E402
from tal_infer.video.evaluation import (camera_metrics, cross_camera_metrics,  # noqa: E402
                                        link_precision_recall, tracklet_truth)
from tal_infer.video.frames import Frame, read_frames  # noqa: E402
from tal_infer.video.network import open_network  # noqa: E402
from tal_infer.video.pipeline import (STAGES, Timings, TrackOptions, associate,  # noqa: E402
                                      camera_tracks, score_function, track_camera,
                                      tracklet_features, tracks_by_frame)
from tal_infer.video.tracker import TrackerOptions  # noqa: E402
from tal_infer.video.tracklets import (AGGREGATIONS, TrackletFeatures,  # noqa: E402
                                       tracklet_scores)


def synthesize(folder: Path, cameras: int, identities: int, frames: int, visits: int,
               visit_frames: int, seed: int) -> Path:
    if not (folder / "video.json").exists():
        from tal_train.data.synthetic import VideoConfig, synthesize_video

        synthesize_video(folder, VideoConfig(cameras=cameras, identities=identities,
                                             frames=frames, visits=visits,
                                             visit_frames=visit_frames, seed=seed),
                         overwrite=True)
    return folder


def learned_windows(cameras, margin: float = 1.0) -> TransitionWindows:
    """[min - margin, max + margin] seconds of the ground-truth transitions between the
    consecutive appearances of each person, per camera pair (a network of the same layout)."""
    segments: dict[int, list[tuple[float, float, int]]] = {}
    for cam in cameras:
        frames: dict[int, list[int]] = {}
        for f, (ids, _) in cam.ground_truth.items():
            for i in ids:
                frames.setdefault(int(i), []).append(f)
        for person, fs in frames.items():
            fs = sorted(fs)
            cuts = [0] + [k for k in range(1, len(fs)) if fs[k] - fs[k - 1] > cam.fps] + [len(fs)]
            segments.setdefault(person, []).extend(
                (fs[a] / cam.fps, fs[b - 1] / cam.fps, cam.index) for a, b in zip(cuts, cuts[1:]))
    gaps: dict[tuple[int, int], list[float]] = {}
    for segs in segments.values():
        segs.sort()
        for (_, end, ca), (start, _, cb) in zip(segs, segs[1:]):
            gaps.setdefault((min(ca, cb), max(ca, cb)), []).append(start - end)
    return TransitionWindows({pair: (min(g) - margin, max(g) + margin)
                              for pair, g in gaps.items()})


def embedding_rate(model: Path, backend: str, cam, frames: int, batch: int,
                   rounds: int = 5) -> dict:
    """Detections/s of embed_boxes on the first ``frames`` frames of a camera (median of
    ``rounds``, the two outputs alternating so load drifts hit both alike)."""
    engine = ReIDEngine(model, backend=backend, device="cpu", batch_size=batch)
    images, boxes = [], []
    for item in read_frames(cam.frames, 0):
        if isinstance(item, Frame) and item.number in cam.detections:
            images.append(item.image)
            boxes.append(cam.detections[item.number][:, :4])
        if len(images) == frames:
            break
    embed_boxes(engine, images, boxes)  # warm-up: every batch shape once
    rates: dict[str, list[float]] = {"descriptor": [], "all maps": []}
    for _ in range(rounds):
        for name, outputs in (("descriptor", [DESCRIPTOR]), ("all maps", None)):
            start = time.perf_counter()
            result = embed_boxes(engine, images, boxes, outputs=outputs)
            rates[name].append(len(result.kept) / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def cross_camera_pairs(feats, truth) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every pair of tracklets from two cameras, and whether each is one person."""
    pairs = [(i, j) for i in range(len(feats)) for j in range(i + 1, len(feats))
             if feats[i].camera != feats[j].camera]
    return pairs, np.array([truth[i] is not None and truth[i] == truth[j] for i, j in pairs])


def link_ap(feats, pairs, same, score_fn, aggregate) -> float:
    """Average precision of cross-camera tracklet pairs ranked by tracklet score."""
    from sklearn.metrics import average_precision_score

    scores = tracklet_scores(score_fn, feats, feats, aggregate)
    scores = (scores + scores.T) / 2
    return float(average_precision_score(same, [scores[i, j] for i, j in pairs]))


@click.command()
@click.option("--model", type=click.Path(path_type=Path), required=True,
              help="Bundle with the global descriptor.")
@click.option("--train-images", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Market-layout training images for the open-set thresholds (repeatable).")
@click.option("--work", type=click.Path(path_type=Path), default=Path("runs/mtmc"),
              show_default=True, help="Where the networks are written (kept for reruns).")
@click.option("--cameras", default=4, show_default=True)
@click.option("--identities", default=30, show_default=True)
@click.option("--frames", default=1500, show_default=True,
              help="Frames per camera; 1500 gives 5-6 people per frame on average, 8 at most.")
@click.option("--visits", default=2, show_default=True)
@click.option("--visit-frames", default=48, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--backends", default="onnxruntime,torch", show_default=True)
def main(model: Path, train_images: tuple[Path, ...], work: Path, cameras: int,
         identities: int, frames: int, visits: int, visit_frames: int, seed: int,
         backends: str) -> None:
    layout = (cameras, identities, frames, visits, visit_frames)
    network = open_network(synthesize(work / f"network-seed{seed}", *layout, seed))
    windows = learned_windows(open_network(synthesize(work / f"network-seed{seed + 1}",
                                                      *layout, seed + 1)))
    engine = ReIDEngine(model, backend="onnxruntime", device="cpu")
    click.echo(f"# {describe()}; model {engine.bundle.path}; network {cameras} cameras, "
               f"{identities} people, {frames} frames, {visits} visits of {visit_frames} frames")
    thresholds = calibrate(engine, train_images).thresholds
    click.echo(f"thresholds (equal error rate on the training images): {thresholds}")

    per_camera, results, timings = {}, {}, {}
    for appearance in (False, True):
        timings[appearance] = Timings()
        options = TrackOptions(tracker=TrackerOptions(appearance=appearance))
        results[appearance] = [track_camera(engine, cam, options, timings[appearance])
                               for cam in network]
        per_camera[appearance] = [
            camera_metrics(r.camera.ground_truth,
                           tracks_by_frame(camera_tracks(r, {t.key: t.track
                                                             for t in r.tracklets})))
            for r in results[appearance]]
    click.echo("\n| per camera (mean of cameras) | IDF1 | IDSW | MOTA |\n|---|---:|---:|---:|")
    for appearance, name in ((False, "DeepSORT without appearance"),
                             (True, "DeepSORT + TAL descriptor")):
        m = per_camera[appearance]
        click.echo(f"| {name} | {np.mean([x['IDF1'] for x in m]):.1%} | "
                   f"{sum(x['IDSW'] for x in m)} | {np.mean([x['MOTA'] for x in m]):.1%} |")

    tracked = results[True]
    timing = timings[True]
    feats = tracklet_features(engine, tracked, timing)
    truth = [tracklet_truth(r.camera.ground_truth, t.frames, t.boxes)
             for r in tracked for t in r.tracklets]
    # Every crop pair of every tracklet sample scored once (the cost of offline association),
    # then looked up by row: the tracklet API only sees features and a scoring function.
    with timing.stage("association"):
        crops = {k: np.concatenate([f.features[k] for f in feats]) for k in feats[0].features}
        pair_scores = {"tal": engine.scores(crops, crops),
                       "descriptor": score_function(engine, "descriptor")(crops, crops)}
    rows, start = [], 0
    for f in feats:
        n = len(f.features[DESCRIPTOR])
        rows.append(TrackletFeatures(f.key, f.camera, f.start, f.end,
                                     {"row": np.arange(start, start + n)}))
        start += n
    lookup = {name: (lambda a, b, m=m: m[np.ix_(a["row"], b["row"])])
              for name, m in pair_scores.items()}
    pairs, same = cross_camera_pairs(rows, truth)
    click.echo(f"\nchance level of link AP (same-person share of cross-camera tracklet pairs): "
               f"{np.mean(same):.1%}")
    click.echo("\n| tracklet score aggregation | link AP, TAL | link AP, descriptor |"
               "\n|---|---:|---:|")
    for aggregate in AGGREGATIONS:
        click.echo(f"| {aggregate} | {link_ap(rows, pairs, same, lookup['tal'], aggregate):.1%}"
                   f" | {link_ap(rows, pairs, same, lookup['descriptor'], aggregate):.1%} |")

    cross = {}
    variants = (("descriptor", "descriptor", TransitionWindows()),
                ("TAL tracklet score", "tal", TransitionWindows()),
                ("TAL + transition windows", "tal", windows))
    click.echo(f"\n{len(feats)} tracklets; windows (s): "
               + ", ".join(f"{a}-{b}: [{lo:.1f}, {hi:.1f}]"
                           for (a, b), (lo, hi) in sorted(windows.windows.items())))
    click.echo("\n| association (offline) | cross IDF1 | IDP | IDR | link precision | "
               "link recall | identities |\n|---|---:|---:|---:|---:|---:|---:|")

    def evaluate(ids):
        gids = {f.key: g for f, g in zip(feats, ids)}
        return cross_camera_metrics([(r.camera.ground_truth,
                                      tracks_by_frame(camera_tracks(r, gids))) for r in tracked])

    for name, scoring, win in variants:
        ids = associate(rows, lookup[scoring], thresholds[scoring], win,
                        timings=timing if name == "TAL tracklet score" else None)
        m, links = evaluate(ids), link_precision_recall(truth, ids)
        cross[name] = m["IDF1"]
        click.echo(f"| {name} | {m['IDF1']:.1%} | {m['IDP']:.1%} | {m['IDR']:.1%} | "
                   f"{links['precision']:.1%} | {links['recall']:.1%} | {len(set(ids))} |")
    online = associate(rows, lookup["tal"], thresholds["tal"], windows, mode="online")
    click.echo(f"online mode, TAL + windows: cross IDF1 {evaluate(online)['IDF1']:.1%}")

    n_frames = sum(r.frames for r in tracked)
    n_dets = sum(r.detections for r in tracked)
    total = sum(timing.seconds.values())
    click.echo(f"\nthroughput (onnxruntime, whole pipeline with the TAL descriptor tracker and "
               f"offline TAL association): {n_frames / total:.1f} frames/s, "
               f"{n_dets / total:.1f} detections/s; time: "
               + ", ".join(f"{s} {timing.seconds[s] / total:.0%}" for s in STAGES))
    click.echo("\n| backend | detections/s, descriptor only | detections/s, all maps |"
               "\n|---|---:|---:|")
    for backend in backends.split(","):
        try:
            rate = embedding_rate(model, backend, network[0], 100, 32)
        except TalError as err:
            click.echo(f"| {backend} | not available: {err} | |")
            continue
        click.echo(f"| {backend} | {rate['descriptor']:.0f} | {rate['all maps']:.0f} |")

    camera_idf1 = {a: 100 * np.mean([x["IDF1"] for x in per_camera[a]]) for a in per_camera}
    click.echo(f"mtmc: idf1_camera_no_appearance={camera_idf1[False]:.1f} "
               f"idf1_camera_tal={camera_idf1[True]:.1f} "
               f"idf1_cross_descriptor={100 * cross['descriptor']:.1f} "
               f"idf1_cross_tal={100 * cross['TAL tracklet score']:.1f} "
               f"idf1_cross_tal_time={100 * cross['TAL + transition windows']:.1f}")


if __name__ == "__main__":
    main()
