"""Structural domain shift: how the *content* of a domain's crops differs, not only their colours.

The photometric styles of `style` (colour cast, contrast, gamma, blur, noise) are largely undone
by IBN-Net's instance normalization, so a benchmark built on them alone cannot tell whether
domain-specific statistics help. With ``SyntheticConfig(shift="structural")`` every domain also
draws a `DomainStructure`:

* **viewpoint**: a domain prior over front / back / side views, multiplied into each camera's;
* **camera pitch**: a keystone warp of the whole crop (a camera looking down magnifies the head
  and shoulders and shrinks the feet; a low camera the reverse), strength per domain;
* **person scale and crop alignment**: the person's height in the box and where the box's slack
  goes (top-aligned, centred or bottom-aligned detections) and the horizontal misalignment;
* **occlusion**: how often something stands in front of the person (a pole, a railing or car
  band across the legs, a box, another pedestrian);
* **clothing palette and texture**: the subset of bright clothing colours people wear there,
  the scale of stripes and checks, and a fabric texture (grain, speckle or knit) on the person;
* **resolution**: the capture resolution (down-up sampling), over a wider range than ``style``.

Draws come from their own random streams ((seed, 0xD2) and (seed, 0xD3, domain) for the
structures, the image's stream for per-image events), so ``shift="photometric"`` (the default) writes exactly the bytes
it wrote before this module existed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from .person import BRIGHT, VIEWS, Fashion
from .style import CameraStyle, DomainStyle

SHIFTS = ("photometric", "structural")
TEXTURES = ("grain", "speckle", "knit")
OCCLUDERS = ("pole", "band", "box", "pedestrian")
# vertical placement of the person in the box: top-aligned, centred, bottom-aligned detections
ALIGNMENTS = ((0.0, 0.2), (0.3, 0.7), (0.8, 1.0))


@dataclass(frozen=True)
class DomainStructure:
    views: tuple[float, float, float, float]  # prior over VIEWS, multiplied into each camera's
    pitch: float                  # keystone: > 0 camera above (head magnified), < 0 below
    scale: tuple[float, float]    # person height / crop height
    top: tuple[float, float]      # vertical placement: fraction of the slack above the head
    shift: float                  # horizontal misalignment / crop width
    occlusion: float              # probability of an occluder in front of the person
    palette: tuple[int, ...]      # indices into person.BRIGHT worn in this domain
    pattern_scale: float          # stripe / check period multiplier
    texture: str                  # fabric texture kind (TEXTURES)
    texture_strength: float       # relative amplitude of the texture on the person
    downscale: float              # captured resolution relative to the output size


def _spread(order: int, count: int, lo: float, hi: float, r: np.random.Generator) -> float:
    """A value in [lo, hi] from the `order`-th of `count` equal bins (jittered inside it), so
    that the domains of one run cover the range instead of clustering."""
    return lo + (hi - lo) * (order + r.uniform(0.15, 0.85)) / count


def sample_structures(seed: int, count: int) -> list[DomainStructure]:
    """One structure per domain; pitch, box scale, alignment, occlusion rate, dominant view and
    resolution are spread across the domains (each domain a different bin of each range)."""
    rng = np.random.default_rng([seed, 0xD2])
    orders = {k: rng.permutation(count) for k in ("pitch", "scale", "top", "occlusion", "view",
                                                   "downscale")}
    out = []
    for d in range(count):
        r = np.random.default_rng([seed, 0xD3, d])
        views = r.dirichlet(np.full(len(VIEWS), 0.7))
        views[orders["view"][d] % len(VIEWS)] += 1.0  # a dominant viewpoint per domain
        lo = _spread(orders["scale"][d], count, 0.55, 0.9, r)
        palette = np.sort(r.choice(len(BRIGHT), int(r.integers(5, 9)), replace=False))
        out.append(DomainStructure(
            views=tuple(float(v) for v in views / views.sum()),  # type: ignore[arg-type]
            pitch=_spread(orders["pitch"][d], count, -0.15, 0.45, r),
            scale=(lo, min(0.99, lo + float(r.uniform(0.05, 0.12)))),
            top=ALIGNMENTS[orders["top"][d] % len(ALIGNMENTS)],
            shift=float(r.uniform(0.0, 0.18)),
            occlusion=_spread(orders["occlusion"][d], count, 0.0, 0.5, r),
            palette=tuple(int(i) for i in palette), pattern_scale=float(r.uniform(0.6, 1.8)),
            texture=TEXTURES[int(r.integers(len(TEXTURES)))],
            texture_strength=float(r.uniform(0.05, 0.3)),
            downscale=_spread(orders["downscale"][d], count, 0.3, 1.0, r)))
    return out


def restyle_domain(style: DomainStyle, structure: DomainStructure) -> DomainStyle:
    """The domain style with the structure's clothing palette and capture resolution."""
    fashion = dataclasses.replace(style.fashion, bright=structure.palette,
                                  pattern_scale=structure.pattern_scale)
    return dataclasses.replace(style, fashion=fashion, downscale=structure.downscale)


def restyle_camera(camera: CameraStyle, structure: DomainStructure) -> CameraStyle:
    """A camera of the domain: its views weighted by the domain prior, the domain's box scale
    (with the camera's own small offset) and misalignment."""
    views = np.asarray(camera.views) * np.asarray(structure.views)
    views = views / views.sum()
    offset = (camera.scale[0] - 0.79) * 0.3  # the camera's own draw, shrunk: small differences
    lo, hi = (min(0.99, max(0.3, s + offset)) for s in structure.scale)
    return dataclasses.replace(camera, views=tuple(float(v) for v in views), scale=(lo, hi),
                               shift=structure.shift)


def keystone(img: np.ndarray, pitch: float) -> np.ndarray:
    """The crop seen from a camera pitched by `pitch` (fraction of the width the far edge is
    narrowed by): the top (pitch > 0) or bottom (< 0) of the scene is magnified."""
    if abs(pitch) < 1e-3:
        return img
    h, w = img.shape[:2]
    inset = abs(pitch) * w / 2
    if pitch > 0:
        src = [(inset, 0), (w - inset, 0), (w, h), (0, h)]
    else:
        src = [(0, 0), (w, 0), (w - inset, h), (inset, h)]
    matrix = cv2.getPerspectiveTransform(np.float32(src), np.float32([(0, 0), (w, 0), (w, h),
                                                                      (0, h)]))
    return cv2.warpPerspective(img, matrix, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)


def apply_texture(img: np.ndarray, mask: np.ndarray, kind: str, strength: float,
                  rng: np.random.Generator) -> None:
    """Multiply the pixels under `mask` (the person) by 1 + strength * a texture field, in place."""
    h, w = mask.shape
    if kind == "grain":      # fine vertical threads
        field = np.repeat(rng.standard_normal((1, w)), h, axis=0)
    elif kind == "speckle":  # independent pixel noise
        field = rng.standard_normal((h, w))
    else:                    # knit: a coarse diagonal weave
        yy, xx = np.mgrid[0:h, 0:w]
        field = np.sin((xx + yy) * 1.3 + rng.uniform(0, 6.3)) * np.sin((xx - yy) * 1.3)
    gain = 1.0 + strength * np.clip(field, -2.5, 2.5)[..., None]
    ys, xs = np.nonzero(mask)
    img[ys, xs] = np.clip(img[ys, xs] * gain[ys, xs], 0, 255).astype(np.uint8)


def draw_occluder(img: np.ndarray, kind: str, palette: list[tuple[int, int, int]],
                  rng: np.random.Generator, pedestrian) -> None:
    """Draw an occluder in front of the person, in place. `pedestrian(img, cx)` draws another
    person centred at pixel column cx (for the ``pedestrian`` kind)."""
    h, w = img.shape[:2]
    color = tuple(int(c) for c in palette[int(rng.integers(len(palette)))])
    if kind == "pole":
        x = int(rng.uniform(0.1, 0.9) * w)
        half = max(1, int(rng.uniform(0.05, 0.12) * w))
        cv2.rectangle(img, (x - half, 0), (x + half, h), color, -1)
    elif kind == "band":     # a railing or a parked car across the legs
        y = int(rng.uniform(0.55, 0.8) * h)
        cv2.rectangle(img, (0, y), (w, h), color, -1)
    elif kind == "box":
        bw, bh = int(rng.uniform(0.3, 0.6) * w), int(rng.uniform(0.15, 0.35) * h)
        x = int(rng.integers(0, max(1, w - bw)))
        cv2.rectangle(img, (x, h - bh), (x + bw, h), color, -1)
    else:
        side = 1 if rng.random() < 0.5 else -1
        pedestrian(img, w / 2 + side * rng.uniform(0.4, 0.65) * w)
