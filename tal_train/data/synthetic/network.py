"""The synthetic camera network: one Market-1501-format folder per domain.

Per domain (``domain-a``, ``domain-b``, ...): N identities, disjoint from every other domain's
(own appearance draws and own pid range: domain d uses pids d*N+1 .. d*N+N), split like
Market-1501 into N//2 training identities and the rest for testing. Each identity walks past
2..C of the domain's C cameras; the images of one camera form a track (nearby frames, one walking
direction, a background window sliding along that camera's plate). Test identities: one query per
camera that saw them at least twice (as Market-1501), the rest in the gallery; the gallery also
gets distractors (pid 0000: background or a cut-off passer-by) and junk (pid -1: a badly cut
detection of a test identity). File names: ``<pid>_c<cam>s1_<frame>_<n>.jpg`` at 25 fps.

Every image is drawn from its own random stream keyed by (seed, domain, identity, image), so the
same seed gives byte-identical files.

``shift``: ``"photometric"`` (default) domains differ in background, colour cast, contrast,
blur, noise and resolution (`style`); ``"structural"`` adds per-domain viewpoint, camera pitch,
person scale and crop alignment, occlusion, clothing palette and texture, and a wider resolution
range (`structure`), for a domain-generalization benchmark that instance norms cannot solve.
"""
from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tal_infer import console
from tal_infer.errors import TalError

from ..market import MARKET_FOLDERS
from .files import prepare_folder, write_jpeg, write_manifest
from .person import VIEWS, PersonSpec, draw_person, sample_person
from .scenes import make_plate
from .structure import (OCCLUDERS, SHIFTS, DomainStructure, apply_texture, draw_occluder, keystone,
                        restyle_camera, restyle_domain, sample_structures)
from .style import CameraStyle, DomainStyle, apply_style, sample_camera_style, sample_domain_styles

RECORDING_FRAMES = 90_000  # one hour of video at 25 fps per camera
WALK_PERIOD = 24           # frames per stride cycle


@dataclass(frozen=True)
class SyntheticConfig:
    identities: int = 40                   # per domain
    domains: int = 3
    cameras: int = 4                       # per domain
    images_per_id: tuple[int, int] = (6, 10)
    size: tuple[int, int] = (128, 64)      # H, W
    seed: int = 0
    distractors: int = 8                   # pid 0000 images per domain gallery
    junk: int = 4                          # pid -1 images per domain gallery
    shift: str = "photometric"             # or "structural" (module docstring)

    def validate(self) -> None:
        lo, hi = self.images_per_id
        checks = [
            (self.identities >= 2, "--identities must be at least 2 (training and test identities)"),
            (1 <= self.domains <= 676, "--domains must be between 1 and 676"),
            (self.cameras >= 2, "--cameras must be at least 2 (queries need another camera)"),
            (3 <= lo <= hi, "--images-per-id must be N or LO-HI with 3 <= LO <= HI"),
            (self.size[0] >= 32 and self.size[1] >= 16, "--size must be at least 32x16 (HxW)"),
            (self.distractors >= 0 and self.junk >= 0, "--distractors/--junk must be >= 0"),
            (self.shift in SHIFTS, f"--shift must be one of {', '.join(SHIFTS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TalError(message)


def domain_names(count: int) -> list[str]:
    letters = string.ascii_lowercase
    return [f"domain-{letters[k]}" if count <= 26 else f"domain-{letters[k // 26]}{letters[k % 26]}"
            for k in range(count)]


@dataclass
class _Camera:
    style: CameraStyle
    plate: np.ndarray
    top: tuple[float, float] = (0.15, 0.85)  # the fraction of the box's slack above the head
    structure: DomainStructure | None = None  # structural shift: pitch, occlusion, texture


def _render(spec: PersonSpec | None, cam: _Camera, dom: DomainStyle, size: tuple[int, int],
            rng: np.random.Generator, view: str, phase: float, bg_x: float,
            cut: float = 0.0) -> np.ndarray:
    """One crop: a window of the camera's plate, the person in it, the capture style on top.
    `cut` > 0 shifts the person out of the box by that fraction (bad detections)."""
    H, W = size
    ph, pw = cam.plate.shape[:2]
    zoom = rng.uniform(0.85, 1.3)
    wh, ww = min(ph, int(H * zoom)), min(pw, int(W * zoom))
    x0 = int(bg_x) % max(1, pw - ww)
    y0 = int(rng.integers(0, ph - wh + 1))
    img = cv2.resize(cam.plate[y0:y0 + wh, x0:x0 + ww], (W, H), interpolation=cv2.INTER_LINEAR)
    if spec is not None:
        height = H * rng.uniform(*cam.style.scale)
        top = rng.uniform(*cam.top) * (H - height)
        cx = W / 2 + rng.uniform(-cam.style.shift, cam.style.shift) * W
        if cut:
            if rng.random() < 0.5:
                cx += rng.choice([-1, 1]) * cut * W
            else:
                top += cut * height
        scene = img.copy() if cam.structure is not None else None
        draw_person(img, spec, view, phase, cx, top, height)
        if cam.structure is not None:
            _structural_effects(img, scene, cam, dom, rng, height)
    if cam.structure is not None:
        img = keystone(img, cam.structure.pitch)
    return apply_style(img, dom, cam.style, rng)


def _structural_effects(img: np.ndarray, scene: np.ndarray, cam: _Camera, dom: DomainStyle,
                        rng: np.random.Generator, height: float) -> None:
    """Fabric texture on the person just drawn over `scene`, then maybe an occluder (in place)."""
    s = cam.structure
    apply_texture(img, (img != scene).any(-1), s.texture, s.texture_strength, rng)
    if rng.random() < s.occlusion:
        def pedestrian(target: np.ndarray, cx: float) -> None:
            other = sample_person(rng, dom.fashion)
            draw_person(target, other, VIEWS[int(rng.integers(len(VIEWS)))],
                        rng.uniform(0, 2 * math.pi), cx, rng.uniform(0.0, 0.15) * height,
                        height * rng.uniform(0.9, 1.1))

        draw_occluder(img, OCCLUDERS[int(rng.integers(len(OCCLUDERS)))], list(dom.palette), rng,
                      pedestrian)


def _split_counts(rng: np.random.Generator, n: int, k: int) -> list[int]:
    return [1 + int(c) for c in rng.multinomial(n - k, np.full(k, 1.0 / k))]


def _identity_images(cfg: SyntheticConfig, d: int, i: int, spec: PersonSpec,
                     cams: list[_Camera], dom: DomainStyle):
    """Yield (camera index, frame, image) for every image of identity i of domain d."""
    rng = np.random.default_rng([cfg.seed, 0xA1, d, i])
    n = int(rng.integers(cfg.images_per_id[0], cfg.images_per_id[1] + 1))
    k = min(cfg.cameras, int(rng.integers(2, cfg.cameras + 1)), n - 1)
    chosen = sorted(int(c) for c in rng.choice(cfg.cameras, k, replace=False))
    for cam_index, count in zip(chosen, _split_counts(rng, n, k)):
        cam = cams[cam_index]
        view = VIEWS[int(rng.choice(len(VIEWS), p=cam.style.views))]
        speed = {"left": -4.0, "right": 4.0}.get(view, 0.0) * rng.uniform(0.6, 1.4)
        start, phase0 = int(rng.integers(0, RECORDING_FRAMES)), rng.uniform(0, 2 * math.pi)
        bg_x0, frame = rng.uniform(0, cam.plate.shape[1]), start
        for j in range(count):
            img_rng = np.random.default_rng([cfg.seed, 0xB0, d, i, cam_index, j])
            v = view if img_rng.random() > 0.1 else VIEWS[int(img_rng.integers(len(VIEWS)))]
            phase = phase0 + 2 * math.pi * (frame - start) / WALK_PERIOD
            img = _render(spec, cam, dom, cfg.size, img_rng, v, phase, bg_x0 + speed * (frame - start))
            yield cam_index, frame, img
            frame += int(rng.integers(3, 20))


def _cameras(cfg: SyntheticConfig, d: int, dom: DomainStyle,
             structure: DomainStructure | None) -> list[_Camera]:
    cams = []
    H, W = cfg.size
    for c in range(cfg.cameras):
        style = sample_camera_style(np.random.default_rng([cfg.seed, 0xC0, d, c]), c)
        plate = make_plate(dom.family, list(dom.palette),
                           np.random.default_rng([cfg.seed, 0xC1, d, c]), int(H * 1.5), W * 8)
        if structure is None:
            cams.append(_Camera(style, plate))
        else:
            cams.append(_Camera(restyle_camera(style, structure), plate, structure.top, structure))
    return cams


def _write_domain(cfg: SyntheticConfig, d: int, dom: DomainStyle,
                  structure: DomainStructure | None, folder: Path, bar) -> None:
    dirs = {split: folder / sub for split, sub in MARKET_FOLDERS.items()}
    cams = _cameras(cfg, d, dom, structure)
    n_train = cfg.identities // 2
    specs = [sample_person(np.random.default_rng([cfg.seed, 0xA0, d, i]), dom.fashion)
             for i in range(cfg.identities)]
    for i, spec in enumerate(specs):
        pid = d * cfg.identities + i + 1
        images = list(_identity_images(cfg, d, i, spec, cams, dom))
        queries = set()
        if i >= n_train:  # one query per camera that saw the identity at least twice
            pick = np.random.default_rng([cfg.seed, 0xA2, d, i])
            for c in sorted({c for c, _, _ in images}):
                idx = [k for k, (cc, _, _) in enumerate(images) if cc == c]
                if len(idx) >= 2:
                    queries.add(idx[int(pick.integers(len(idx)))])
        for k, (c, frame, img) in enumerate(images):
            split = "train" if i < n_train else ("query" if k in queries else "gallery")
            write_jpeg(dirs[split] / f"{pid:04d}_c{c + 1}s1_{frame:06d}_01.jpg", img, dom.jpeg_quality)
            bar.update(1)
    _write_clutter(cfg, d, dom, cams, specs[n_train:], dirs["gallery"], bar)


def _write_clutter(cfg: SyntheticConfig, d: int, dom: DomainStyle, cams: list[_Camera],
                   test_specs: list[PersonSpec], folder: Path, bar) -> None:
    """Distractors (pid 0000) and junk (pid -1) in the gallery, as in Market-1501."""
    for k in range(cfg.distractors + cfg.junk):
        rng = np.random.default_rng([cfg.seed, 0xE0, d, k])
        c = int(rng.integers(cfg.cameras))
        frame = int(rng.integers(0, RECORDING_FRAMES))
        view = VIEWS[int(rng.integers(len(VIEWS)))]
        if k < cfg.distractors:  # background, or a passer-by cut by the box
            spec = sample_person(rng, dom.fashion) if rng.random() < 0.5 else None
            pid, cut = "0000", rng.uniform(0.45, 0.7)
        else:
            spec, pid = test_specs[int(rng.integers(len(test_specs)))], "-1"
            cut = rng.uniform(0.35, 0.6)
        img = _render(spec, cams[c], dom, cfg.size, rng, view, rng.uniform(0, 2 * math.pi),
                      rng.uniform(0, cams[c].plate.shape[1]), cut)
        write_jpeg(folder / f"{pid}_c{c + 1}s1_{frame:06d}_{k + 2:02d}.jpg", img, dom.jpeg_quality)
        bar.update(1)


def synthesize(out: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(),
               overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write the camera network under `out`; returns the domain folders."""
    config.validate()
    out = Path(out)
    names = domain_names(config.domains)
    folders = [out / n for n in names]
    for f in folders:
        prepare_folder(f, list(MARKET_FOLDERS.values()), overwrite)
    styles = sample_domain_styles(config.seed, names)
    structures: list[DomainStructure | None] = [None] * len(names)
    if config.shift == "structural":
        structures = list(sample_structures(config.seed, len(names)))
        styles = [restyle_domain(s, t) for s, t in zip(styles, structures)]
    # The image count is only known while drawing; the bar's total is the expected count.
    expected = config.domains * (config.identities * sum(config.images_per_id) // 2
                                 + config.distractors + config.junk)
    with console.progress(total=expected, unit="img", desc="synthesize",
                          enabled=progress) as bar:
        for d, (dom, structure, folder) in enumerate(zip(styles, structures, folders)):
            _write_domain(config, d, dom, structure, folder, bar)
    write_manifest(out / "synthesis.json", "tal-reid synthetic camera network", config, styles,
                   structures if config.shift == "structural" else None)
    return folders
