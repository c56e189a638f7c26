"""``tal-track``: multi-camera tracking and cross-camera association over MOTChallenge folders.

``tal-track run NETWORK --out DIR`` tracks every camera (DeepSORT with the TAL descriptor),
links the tracklets into global identities and writes ``DIR/<camera>.txt`` (MOTChallenge rows
with global ids), ``DIR/report.html`` and ``DIR/summary.json`` (counts, timings, and the
TrackEval / scikit-learn metrics when every camera has ``gt/gt.txt``).
``tal-track calibrate`` writes the open-set threshold beside the bundle. docs/video.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..atomic import atomic_file
from ..backends import EXTRACTOR_BACKENDS
from ..bundle import find_latest_bundle
from ..cli_common import device_option, friendly_errors, verbosity_options
from ..errors import TalError
from ..output_paths import check_output_folder, writing
from .association import TransitionWindows
from .calibration import (MAX_TRACKLETS, calibrate, default_path, load_calibration,
                          save_calibration)
from .mot import write_tracks
from .network import open_network
from .pipeline import (STAGES, Timings, TrackOptions, associate, camera_tracks, score_function,
                       track_camera, tracklet_features, tracks_by_frame)
from .report import write_report
from .tracker import TrackerOptions
from .tracklets import AGGREGATIONS, DEFAULT_AGGREGATE, DEFAULT_SAMPLE

_WINDOW = re.compile(r"^([^:]+):([^:]+):(-?[\d.]+):(-?[\d.]+)$")


def _engine(model: Path | None, backend: str, device: str, batch: int):
    from ..engine import ReIDEngine

    return ReIDEngine(model or find_latest_bundle(), backend=backend, device=device,
                      batch_size=batch)


def parse_windows(specs: tuple[str, ...], names: list[str]) -> TransitionWindows:
    """``A:B:LOW:HIGH`` (camera names, seconds) -> `TransitionWindows`."""
    windows = {}
    for spec in specs:
        m = _WINDOW.match(spec)
        if m is None:
            raise TalError(f"--transition {spec!r}: expected CAMERA:CAMERA:LOW:HIGH (seconds), "
                           "e.g. cam1:cam2:0:30")
        a, b, low, high = m.group(1), m.group(2), float(m.group(3)), float(m.group(4))
        for cam in (a, b):
            if cam not in names:
                raise TalError(f"--transition {spec!r}: no camera {cam!r} (cameras: "
                               f"{', '.join(names)})")
        if low > high:
            raise TalError(f"--transition {spec!r}: LOW is above HIGH")
        windows[(names.index(a), names.index(b))] = (low, high)
    return TransitionWindows(windows)


model_option = click.option("--model", type=click.Path(path_type=Path), default=None,
                            help="Export bundle (default: the latest under ./export/).")
backend_option = click.option("--backend", default="auto", show_default=True,
                              type=click.Choice(EXTRACTOR_BACKENDS), help="Extractor backend.")
batch_option = click.option("--batch", default=32, show_default=True,
                            type=click.IntRange(1), help="Crops per extractor batch.")
aggregate_option = click.option("--aggregate", default=DEFAULT_AGGREGATE, show_default=True,
                                type=click.Choice(list(AGGREGATIONS)),
                                help="How crop-pair scores make a tracklet score.")
sample_option = click.option("--sample", default=DEFAULT_SAMPLE, show_default=True,
                             type=click.IntRange(1), help="Crops kept per tracklet.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  tal-track calibrate --images data/synthetic/domain-a/bounding_box_train
  tal-track run data/video --out tracks/
  tal-track run data/video --out tracks/ --mode online --transition cam1:cam2:0:20""")
def main() -> None:
    """Multi-camera tracking and cross-camera re-identification with a TAL bundle."""


@main.command(epilog="""\b
Examples:
  tal-track run data/video --out tracks/
  tal-track run data/video --out tracks/ --scoring descriptor --appearance none
  tal-track run cams/ --out t/ --cameras lobby,door --transition lobby:door:2:40""")
@click.argument("network", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for <camera>.txt, report.html and summary.json.")
@click.option("--cameras", default=None, help="Comma-separated camera folders (default: all "
                                               "with det/det.txt).")
@model_option
@backend_option
@device_option
@batch_option
@click.option("--min-conf", default=TrackOptions.min_conf, show_default=True, type=float,
              help="Detections below this confidence are ignored.")
@click.option("--appearance", default="auto", show_default=True,
              type=click.Choice(["auto", "descriptor", "none"]),
              help="Tracker appearance vectors: the TAL descriptor, or none (motion only); "
                   "auto: the descriptor when the bundle has one.")
@click.option("--scoring", default="tal", show_default=True,
              type=click.Choice(["tal", "descriptor"]),
              help="Tracklet scores from the TAL heads or from the global descriptor.")
@aggregate_option
@sample_option
@click.option("--mode", default="offline", show_default=True,
              type=click.Choice(["offline", "online"]), help="Associate all tracklets at once, "
              "or each as it closes.")
@click.option("--threshold", type=float, default=None,
              help="Open-set threshold (default: from the calibration file).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration file (default: <bundle>.track-calibration.json).")
@click.option("--transition", multiple=True, metavar="A:B:LOW:HIGH",
              help="Allowed seconds from leaving camera A to entering B (repeatable).")
@click.option("--horizon", type=float, default=600.0, show_default=True,
              help="Online mode: only identities seen in the last SECONDS are candidates "
                   "(bounds the work per tracklet).")
@click.option("--on-missing-frame", default="fail", show_default=True,
              type=click.Choice(["fail", "skip"]),
              help="A missing or unreadable frame stops the run, or is skipped and counted.")
@verbosity_options
@friendly_errors
def run(network: Path, out: Path, cameras: str | None, model: Path | None, backend: str,
        device: str, batch: int, min_conf: float, appearance: str, scoring: str, aggregate: str,
        sample: int, mode: str, threshold: float | None, calibration: Path | None,
        transition: tuple[str, ...], horizon: float, on_missing_frame: str) -> None:
    """Track every camera of NETWORK (MOTChallenge folders) and link people across cameras."""
    check_output_folder(out, "--out")
    cams = open_network(network, cameras.split(",") if cameras else None)
    names = [c.name for c in cams]
    windows = parse_windows(transition, names)
    engine = _engine(model, backend, device, batch)
    if threshold is None:
        threshold = load_calibration(calibration or default_path(engine.bundle.path),
                                     engine.bundle.fingerprint).threshold(scoring)
    score_fn = score_function(engine, scoring)
    if appearance == "auto":
        appearance = "descriptor" if "descriptor" in engine.bundle.output_shapes else "none"
    options = TrackOptions(min_conf=min_conf, sample_size=sample,
                           on_missing_frame=on_missing_frame,
                           tracker=TrackerOptions(appearance=appearance == "descriptor"))
    click.echo(f"model {engine.bundle.path}; tracker appearance: {appearance}; scoring: "
               f"{scoring} ({aggregate}), threshold {threshold:.4f}, {mode}", err=True)
    timings = Timings()
    results = []
    for cam in cams:
        if not cam.detections:
            click.echo(f"{cam.name}: no detections in det/det.txt (no tracks)", err=True)
        r = track_camera(engine, cam, options, timings)
        results.append(r)
        click.echo(f"{cam.name}: {r.frames} frames, {r.detections} detections, "
                   f"{len(r.tracklets)} tracklets"
                   + (f", {len(r.missing)} frames missing or unreadable (skipped)"
                      if r.missing else "")
                   + (f", {r.skipped_boxes} boxes too small or outside the frame"
                      if r.skipped_boxes else ""), err=True)
    feats = tracklet_features(engine, results, timings)
    ids = associate(feats, score_fn, threshold, windows, mode, horizon, aggregate, timings)
    global_ids = {f.key: g for f, g in zip(feats, ids)}
    summary = {"model": str(engine.bundle.path), "appearance": appearance, "scoring": scoring,
               "aggregate": aggregate, "mode": mode, "threshold": threshold,
               "identities": len(set(ids)), "timings_s": timings.seconds,
               "cameras": {r.camera.name: {"frames": r.frames, "detections": r.detections,
                                           "tracklets": len(r.tracklets),
                                           "missing_frames": len(r.missing)}
                           for r in results}}
    summary.update(_evaluate(results, global_ids))
    out.mkdir(parents=True, exist_ok=True)
    with writing(out, "--out"):
        for r in results:
            write_tracks(out / f"{r.camera.name}.txt", camera_tracks(r, global_ids))
        write_report(out / "report.html", [t for r in results for t in r.tracklets], global_ids,
                     names, f"{network} with {engine.bundle.name}")
        with atomic_file(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
    total = sum(timings.seconds.values()) or 1.0
    click.echo(f"{len(set(ids))} global identities from {len(feats)} tracklets; time: "
               + ", ".join(f"{s} {timings.seconds[s] / total:.0%}" for s in STAGES), err=True)
    if "cross_camera" in summary:
        for name, m in summary["per_camera"].items():
            click.echo(f"{name}: MOTA {m['MOTA']:.1%} IDF1 {m['IDF1']:.1%} IDSW {m['IDSW']}")
        c, links = summary["cross_camera"], summary["links"]
        click.echo(f"cross-camera IDF1 {c['IDF1']:.1%} (IDP {c['IDP']:.1%}, IDR {c['IDR']:.1%});"
                   f" links precision {links['precision']:.1%} recall {links['recall']:.1%}")
    click.echo(f"wrote {len(results)} track files, report.html and summary.json to {out}")


def _evaluate(results, global_ids) -> dict:
    """Metrics when every camera has ground truth (tal_infer.video.evaluation)."""
    if not results or any(r.camera.ground_truth is None for r in results):
        return {}
    from .evaluation import (camera_metrics, cross_camera_metrics, link_precision_recall,
                             tracklet_truth)

    pairs = [(r.camera.ground_truth, tracks_by_frame(camera_tracks(r, global_ids)))
             for r in results]
    truth = [tracklet_truth(r.camera.ground_truth, t.frames, t.boxes)
             for r in results for t in r.tracklets]
    predicted = [global_ids[t.key] for r in results for t in r.tracklets]
    return {"per_camera": {r.camera.name: camera_metrics(gt, tr)
                           for r, (gt, tr) in zip(results, pairs)},
            "cross_camera": cross_camera_metrics(pairs),
            "links": link_precision_recall(truth, predicted)}


@main.command("calibrate", epilog="""\b
Examples:
  tal-track calibrate --images data/synthetic/domain-a/bounding_box_train \\
                      --images data/synthetic/domain-b/bounding_box_train""")
@click.option("--images", "folders", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Market-layout training images (identity and camera in the names); "
                   "repeatable.")
@model_option
@backend_option
@device_option
@batch_option
@aggregate_option
@sample_option
@click.option("--max-tracklets", type=click.IntRange(min=2), default=MAX_TRACKLETS,
              show_default=True,
              help="Pseudo-tracklets (identity x camera) scored all against all, from whole "
                   "identities drawn at random: the cost grows with its square.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Calibration file (default: <bundle>.track-calibration.json beside it).")
@verbosity_options
@friendly_errors
def calibrate_cmd(folders: tuple[Path, ...], model: Path | None, backend: str, device: str,
                  batch: int, aggregate: str, sample: int, max_tracklets: int,
                  out: Path | None) -> None:
    """Calibrate the open-set ("new person") threshold on training images."""
    engine = _engine(model, backend, device, batch)
    out = out or default_path(engine.bundle.path)
    check_output_folder(out.parent, "--out")
    cal = calibrate(engine, folders, sample, aggregate, max_tracklets)  # bar: embed_files
    with writing(out, "--out"):
        save_calibration(cal, out)
    for name, value in cal.thresholds.items():
        click.echo(f"{name}: threshold {value:.4f} (equal error rate "
                   f"{cal.equal_error_rate[name]:.1%})")
    click.echo(f"{cal.pairs['positive']} same-person and {cal.pairs['negative']} "
               f"other-person pairs; wrote {out}")
