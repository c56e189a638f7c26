"""Synthetic multi-camera video in the MOTChallenge layout, for cross-camera linking examples.

The same identities (same `PersonSpec`s and renderer as the image generator) walk through every
camera in turn: identity i's k-th visit (camera ``k % cameras``, round ``k // cameras``) runs
from frame ``offset_i + k * lag`` for ``visit_frames`` frames (it leaves one field of view, then
appears in the next; with ``visits`` > 1 it comes back to every camera, so it leaves and
re-enters). With ``visit_frames`` below ``lag`` the visits do not overlap in time (cameras with
disjoint fields of view); by default they do (half the frames per visit). In each camera a visit is a lateral walk
(side view) or a walk towards / away from the camera (front / back view), with a perspective
size that grows with the feet's image row. Each camera has its own domain style (background
family, colour cast, blur, noise, JPEG quality), so linking across cameras is a real domain
shift. Per camera ``<cam>/``:

- ``img1/000001.jpg ...`` frames;
- ``gt/gt.txt``: ``frame,id,left,top,width,height,1,1,visibility`` (boxes clipped to the frame;
  visibility = fraction of the person inside it; boxes under 30% visible are left out);
- ``det/det.txt``: ``frame,-1,left,top,width,height,conf,-1,-1,-1``: the ground truth as a
  detector would give it (jittered boxes, about 5% missed, a few low-confidence false positives);
- ``seqinfo.ini`` (MOTChallenge sequence information).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tal_infer.errors import TalError

from .files import prepare_folder, write_jpeg, write_manifest
from .person import PersonSpec, draw_person, sample_person
from .scenes import make_plate
from .style import apply_style, sample_camera_style, sample_domain_styles

STRIDE_FRAMES = 16
MIN_VISIBLE = 0.3


@dataclass(frozen=True)
class VideoConfig:
    cameras: int = 2
    identities: int = 6
    frames: int = 60
    frame_size: tuple[int, int] = (240, 320)  # H, W
    seed: int = 0
    fps: int = 25
    visits: int = 1         # passes of each person through each camera (> 1: re-entries)
    visit_frames: int = 0   # frames per visit; 0: frames // (2 * visits)

    def validate(self) -> None:
        h, w = self.frame_size
        if self.cameras < 1 or self.identities < 1:
            raise TalError("--cameras and --identities must be at least 1")
        if self.frames < 8:
            raise TalError("--frames must be at least 8")
        if self.visits < 1 or self.visit_frames < 0:
            raise TalError("--visits must be at least 1 and --visit-frames at least 0")
        if h < 64 or w < 64:
            raise TalError("--frame-size must be at least 64x64")


@dataclass(frozen=True)
class _Visit:
    start: int
    length: int
    kind: str          # "lateral" or "depth"
    direction: int     # lateral: +1 right, -1 left; depth: +1 towards the camera, -1 away
    x: float           # fraction of the width: start (lateral) or lane (depth)
    y: float           # fraction of the height: feet row (lateral) or start row (depth)
    phase: float

    def at(self, f: int, size: tuple[int, int]) -> tuple[float, float, float, str, float]:
        """(centre x, feet y, height, view, phase) in pixels at frame f."""
        H, W = size
        t = (f - self.start) / max(1, self.length - 1)
        if self.kind == "lateral":
            feet = self.y * H
            cx = (self.x + self.direction * 1.3 * t) * W
            view = "right" if self.direction > 0 else "left"
        else:
            near, far = 0.97, 0.6
            a, b = (far, near) if self.direction > 0 else (near, far)
            feet = (a + (b - a) * t) * H
            cx = self.x * W
            view = "front" if self.direction > 0 else "back"
        height = H * (0.22 + 0.5 * (feet / H - 0.55) / 0.45)
        return cx, feet, height, view, self.phase + 2 * math.pi * (f - self.start) / STRIDE_FRAMES


def _visits(cfg: VideoConfig, i: int) -> list[_Visit]:
    """Identity i's visits (camera k % cameras for the k-th); starts and lanes are spread over the identities so
    that people overlap now and then, not all the time."""
    rng = np.random.default_rng([cfg.seed, 0x71, i])
    count = cfg.cameras * cfg.visits
    length = max(8, cfg.visit_frames or cfg.frames // (2 * cfg.visits))
    span = max(0, cfg.frames - length)
    lag = span // max(1, count)
    free = span - lag * (count - 1)
    offset = round(free * i / max(1, cfg.identities - 1))
    visits = []
    for k in range(count):
        c = k % cfg.cameras
        lane = (np.random.default_rng([cfg.seed, 0x76, c]).permutation(cfg.identities)[i]
                + rng.uniform(0.25, 0.75)) / cfg.identities
        lateral = rng.random() < 0.6
        direction = int(rng.choice([-1, 1]))
        x = (-0.15 if direction > 0 else 1.15) if lateral else 0.1 + 0.8 * lane
        visits.append(_Visit(offset + k * lag, length, "lateral" if lateral else "depth",
                             direction, x, 0.62 + 0.35 * lane, rng.uniform(0, 2 * math.pi)))
    return visits


def _clip_box(box, size) -> tuple[float, float, float, float, float] | None:
    """(left, top, width, height, visibility) of a box clipped to the frame, None if hidden."""
    H, W = size
    x0, y0, x1, y1 = box
    area = max(1e-6, (x1 - x0) * (y1 - y0))
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(W), x1), min(float(H), y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    vis = (cx1 - cx0) * (cy1 - cy0) / area
    return (cx0, cy0, cx1 - cx0, cy1 - cy0, vis) if vis >= MIN_VISIBLE else None


def _detections(gt: list[tuple], rng: np.random.Generator, size: tuple[int, int]) -> list[str]:
    H, W = size
    lines = []
    for f, _, left, top, w, h, _ in gt:
        if rng.random() < 0.05:
            continue
        w2, h2 = w * rng.normal(1, 0.05), h * rng.normal(1, 0.05)
        l2, t2 = left + rng.normal(0, 0.04) * w, top + rng.normal(0, 0.03) * h
        box = _clip_box((l2, t2, l2 + w2, t2 + h2), size)
        if box is not None:
            lines.append((f, box[:4], rng.uniform(0.6, 1.0)))
    for f in sorted({g[0] for g in gt}):
        if rng.random() < 0.05:  # a false positive
            h = rng.uniform(0.2, 0.5) * H
            left, top = rng.uniform(0, W - h * 0.4), rng.uniform(0, H - h)
            lines.append((f, (left, top, h * 0.4, h), rng.uniform(0.3, 0.55)))
    lines.sort(key=lambda x: x[0])
    return [f"{f},-1,{b[0]:.1f},{b[1]:.1f},{b[2]:.1f},{b[3]:.1f},{c:.3f},-1,-1,-1"
            for f, b, c in lines]


def _render_camera(cfg: VideoConfig, c: int, folder: Path, specs: list[PersonSpec],
                   visits: list[list[_Visit]], style, bar) -> None:
    H, W = cfg.frame_size
    cam = sample_camera_style(np.random.default_rng([cfg.seed, 0x72, c]), c)
    plate = make_plate(style.family, list(style.palette), np.random.default_rng([cfg.seed, 0x73, c]),
                       H, W)
    gt = []
    for f in range(cfg.frames):
        img = plate.copy()
        here = [(v, i) for i, vs in enumerate(visits) for v in vs[c::cfg.cameras]]
        present = [(v.at(f, cfg.frame_size), i) for v, i in here
                   if v.start <= f < v.start + v.length]
        for (cx, feet, height, view, phase), i in sorted(present, key=lambda p: p[0][1]):
            box = _clip_box(draw_person(img, specs[i], view, phase, cx, feet - height, height),
                            cfg.frame_size)
            if box is not None:
                gt.append((f + 1, i + 1, *box))
        img = apply_style(img, style, cam, np.random.default_rng([cfg.seed, 0x74, c, f]),
                          scale=1.0)
        write_jpeg(folder / "img1" / f"{f + 1:06d}.jpg", img, style.jpeg_quality)
        bar.update(1)
    gt.sort(key=lambda g: (g[0], g[1]))
    (folder / "gt" / "gt.txt").write_text("".join(
        f"{f},{i},{l:.1f},{t:.1f},{w:.1f},{h:.1f},1,1,{v:.2f}\n" for f, i, l, t, w, h, v in gt))
    det = _detections(gt, np.random.default_rng([cfg.seed, 0x75, c]), cfg.frame_size)
    (folder / "det" / "det.txt").write_text("".join(line + "\n" for line in det))
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={folder.name}\nimDir=img1\nframeRate={cfg.fps}\n"
        f"seqLength={cfg.frames}\nimWidth={W}\nimHeight={H}\nimExt=.jpg\n")


def synthesize_video(out: str | os.PathLike, config: VideoConfig = VideoConfig(),
                     overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write one MOTChallenge-style sequence per camera under `out`; returns their folders."""
    config.validate()
    out = Path(out)
    names = [f"cam{c + 1}" for c in range(config.cameras)]
    folders = [out / n for n in names]
    for f in folders:
        prepare_folder(f, ["img1", "gt", "det"], overwrite)
    styles = sample_domain_styles(config.seed, names)
    specs = [sample_person(np.random.default_rng([config.seed, 0x70, i]))
             for i in range(config.identities)]
    visits = [_visits(config, i) for i in range(config.identities)]
    with tqdm(total=config.cameras * config.frames, unit="frame", desc="synthesize-video",
              disable=not progress) as bar:
        for c, (folder, style) in enumerate(zip(folders, styles)):
            _render_camera(config, c, folder, specs, visits, style, bar)
    write_manifest(out / "video.json", "tal-reid synthetic multi-camera video", config, styles)
    return folders
