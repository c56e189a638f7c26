"""Domain and camera styles: the appearance shift between camera networks.

A domain (one synthetic "dataset") fixes a background family, a clothing-habit prior, an
illumination colour cast, saturation, brightness, contrast and gamma, blur, sensor noise, a
resolution (down-up sampling factor) and a JPEG quality. Casts are spread evenly around the hue
circle across the domains of one run, so an unseen domain always has a cast the training domains
lack (it changes apparent clothing colours, the cue a colour-only model would rely on). A camera
adds a viewpoint distribution, scale/placement jitter of the person box, a side light and a mild
style shift of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .person import VIEWS, Fashion
from .scenes import FAMILIES, family_palette

_LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)


@dataclass(frozen=True)
class DomainStyle:
    name: str
    family: str
    palette: tuple[tuple[int, int, int], ...]
    fashion: Fashion
    gains: tuple[float, float, float]   # BGR colour cast, mean 1
    saturation: float
    brightness: float
    contrast: float
    gamma: float
    blur: float                         # Gaussian sigma, in pixels of a 128-pixel-high crop
    noise: float                        # sensor noise sigma on the 0..255 scale
    downscale: float                    # captured resolution relative to the output size
    jpeg_quality: int


@dataclass(frozen=True)
class CameraStyle:
    index: int
    views: tuple[float, float, float, float]  # P(front, back, left, right)
    scale: tuple[float, float]                # person height / crop height
    shift: float                              # horizontal placement jitter / crop width
    gains: tuple[float, float, float]
    gamma: float
    light: float                              # left-right illumination gradient


def _cast(angle: float, strength: float) -> tuple[float, float, float]:
    r, g, b = (1 + strength * math.cos(angle - k * 2 * math.pi / 3) for k in range(3))
    return b, g, r


def sample_domain_styles(seed: int, names: list[str]) -> list[DomainStyle]:
    """One style per domain name; families and cast hues are spread across the domains."""
    rng = np.random.default_rng([seed, 0xD0])
    families = [FAMILIES[i] for i in rng.permutation(len(FAMILIES))]
    offset = rng.uniform(0, 2 * math.pi)
    styles = []
    for k, name in enumerate(names):
        r = np.random.default_rng([seed, 0xD1, k])
        family = families[k % len(families)]
        angle = offset + 2 * math.pi * k / len(names) + r.uniform(-0.3, 0.3)
        night = family == "night"
        styles.append(DomainStyle(
            name=name, family=family, palette=tuple(family_palette(family, r)),
            fashion=Fashion(dark=r.uniform(0.2, 0.6), short_sleeves=r.uniform(0.05, 0.8),
                            shorts=r.uniform(0.0, 0.35), skirt=r.uniform(0.03, 0.2),
                            patterned=r.uniform(0.2, 0.6), backpack=r.uniform(0.05, 0.35),
                            bag=r.uniform(0.05, 0.25), hat=r.uniform(0.03, 0.25)),
            gains=_cast(angle, r.uniform(0.18, 0.4)), saturation=r.uniform(0.55, 1.35),
            brightness=r.uniform(0.55, 0.8) if night else r.uniform(0.75, 1.2),
            contrast=r.uniform(0.65, 1.25), gamma=r.uniform(0.7, 1.45),
            blur=r.choice([0.0, r.uniform(0.5, 1.4)]), noise=r.uniform(1.0, 9.0),
            downscale=r.uniform(0.4, 1.0), jpeg_quality=int(r.integers(40, 96)),
        ))
    return styles


def sample_camera_style(rng: np.random.Generator, index: int) -> CameraStyle:
    views = rng.dirichlet(np.full(len(VIEWS), 0.8))
    lo = rng.uniform(0.72, 0.86)
    return CameraStyle(
        index=index, views=tuple(float(v) for v in views),  # type: ignore[arg-type]
        scale=(lo, min(0.98, lo + rng.uniform(0.06, 0.14))), shift=rng.uniform(0.03, 0.1),
        gains=tuple(float(g) for g in rng.uniform(0.94, 1.06, 3)),  # type: ignore[arg-type]
        gamma=rng.uniform(0.9, 1.1), light=rng.uniform(-0.15, 0.15),
    )


def apply_style(img: np.ndarray, domain: DomainStyle, camera: CameraStyle,
                rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """The capture pipeline of `domain` seen through `camera`, on a BGR uint8 image.
    `scale` sizes the blur (default: image height / 128, right for person crops; video frames
    pass 1 since their people are about that tall). The JPEG quality is applied on writing."""
    h, w = img.shape[:2]
    x = img.astype(np.float32) * (1.0 / 255.0)
    gains = np.array(domain.gains, np.float32) * np.array(camera.gains, np.float32)
    gains *= domain.brightness * rng.uniform(0.95, 1.05)
    x *= gains
    if camera.light:
        x *= (1.0 + camera.light * np.linspace(-1, 1, w, dtype=np.float32))[None, :, None]
    gray = (x @ _LUMA_BGR)[..., None]
    x = gray + (x - gray) * domain.saturation
    x = (x - 0.5) * domain.contrast + 0.5
    np.clip(x, 0.0, 1.0, out=x)
    x **= domain.gamma * camera.gamma
    scale = h / 128.0 if scale is None else scale
    if domain.downscale < 0.98:
        small = (max(8, round(w * domain.downscale)), max(8, round(h * domain.downscale)))
        x = cv2.resize(cv2.resize(x, small, interpolation=cv2.INTER_AREA), (w, h),
                       interpolation=cv2.INTER_LINEAR)
    if domain.blur > 0:
        x = cv2.GaussianBlur(x, (0, 0), domain.blur * scale)
    x = x * 255.0 + rng.standard_normal(x.shape, dtype=np.float32) * domain.noise
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
