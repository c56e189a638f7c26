"""Background plates: what a camera of a domain looks at.

A domain draws its backgrounds from one family (street, indoor, park, night, plaza, station)
with its own palette; each camera gets one plate (a static scene larger than a crop), and every
crop or video frame of that camera is cut from it, so backgrounds are consistent within a camera
and differ between cameras and, more strongly, between domains.
"""
from __future__ import annotations

import cv2
import numpy as np

FAMILIES = ("street", "indoor", "park", "night", "plaza", "station")


def _color(rng: np.random.Generator, base, spread: float = 25.0) -> tuple[int, int, int]:
    c = np.clip(np.asarray(base, np.float64) + rng.normal(0, spread, 3), 0, 255)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def family_palette(family: str, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Four BGR colours typical of the family: wall/far, detail, ground, ground detail."""
    bases = {
        "street": [(150, 160, 175), (70, 80, 95), (105, 105, 110), (200, 200, 200)],
        "indoor": [(185, 200, 215), (110, 120, 140), (150, 160, 170), (95, 100, 110)],
        "park": [(120, 160, 110), (40, 90, 45), (80, 140, 90), (140, 170, 185)],
        "night": [(45, 35, 30), (120, 200, 240), (40, 40, 45), (70, 70, 75)],
        "plaza": [(170, 175, 190), (90, 100, 150), (140, 150, 170), (110, 120, 140)],
        "station": [(190, 185, 175), (60, 60, 65), (160, 155, 150), (60, 140, 200)],
    }[family]
    return [_color(rng, b) for b in bases]


def _low_freq_noise(rng: np.random.Generator, h: int, w: int, amp: float) -> np.ndarray:
    small = rng.normal(0, amp, (max(2, h // 24), max(2, w // 24), 1)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def make_plate(family: str, palette: list[tuple[int, int, int]], rng: np.random.Generator,
               h: int, w: int) -> np.ndarray:
    """A BGR uint8 background of size (h, w): far scene above a horizon, ground below."""
    wall, detail, ground, ground2 = palette
    img = np.empty((h, w, 3), np.uint8)
    horizon = int(h * rng.uniform(0.45, 0.62))
    img[:horizon] = wall
    img[horizon:] = ground
    if family in ("street", "station", "indoor"):
        step = int(rng.integers(max(8, w // 12), max(9, w // 5)))
        for x in range(int(rng.integers(0, step)), w, step):
            if family == "street":   # windows
                for y in range(int(h * 0.05), horizon - 10, max(8, step // 2)):
                    cv2.rectangle(img, (x, y), (x + step // 3, y + step // 4), detail, -1)
            elif family == "station":  # pillars and posters
                cv2.rectangle(img, (x, 0), (x + step // 5, horizon), detail, -1)
                if rng.random() < 0.5:
                    cv2.rectangle(img, (x + step // 3, int(horizon * 0.3)),
                                  (x + step // 3 + step // 3, int(horizon * 0.75)),
                                  _color(rng, (60, 140, 200), 60), -1)
            else:  # doors
                if rng.random() < 0.4:
                    cv2.rectangle(img, (x, int(horizon * 0.35)), (x + step // 3, horizon), detail, -1)
        cv2.line(img, (0, horizon), (w, horizon), detail, max(1, h // 60))
    if family in ("indoor", "plaza", "station"):  # floor tiles
        step = int(rng.integers(max(6, h // 16), max(7, h // 7)))
        for y in range(horizon, h, step):
            cv2.line(img, (0, y), (w, y), ground2, 1)
        for x in range(0, w, step * 2):
            cv2.line(img, (x, horizon), (x, h), ground2, 1)
    if family == "park":  # tree crowns and a path
        for _ in range(int(rng.integers(3, 8))):
            c = (int(rng.integers(0, w)), int(rng.integers(0, horizon)))
            cv2.circle(img, c, int(rng.integers(h // 10, h // 4)), _color(rng, detail, 15), -1)
        y = int(rng.uniform(horizon, h * 0.9))
        cv2.rectangle(img, (0, y), (w, y + h // 8), ground2, -1)
    if family == "night":  # lights
        for _ in range(int(rng.integers(4, 12))):
            c = (int(rng.integers(0, w)), int(rng.integers(0, horizon)))
            cv2.circle(img, c, int(rng.integers(2, max(3, h // 30))), detail, -1)
        img = cv2.GaussianBlur(img, (0, 0), 1.5)
    if family == "street":  # curb and road markings
        cv2.line(img, (0, int(h * 0.8)), (w, int(h * 0.8)), ground2, max(1, h // 50))
    noise = _low_freq_noise(rng, h, w, 14.0) + rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
