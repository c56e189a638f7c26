"""Procedural pedestrians: who a person is (`PersonSpec`) and how to draw one (`draw_person`).

An identity is everything that stays fixed across cameras: body proportions, skin and hair,
upper/lower clothing colours and texture (solid, stripes, checks, logo), sleeve and leg length,
shoes and accessories (shoulder bag, backpack, hat). What changes per image is the pose (walking
phase, which sets limb angles) and the viewpoint (front, back, left/right side): a logo is seen
only from the front, a backpack only as straps from the front, as a pack from the back and as a
bulge from the side. Drawing uses OpenCV primitives with sub-pixel precision (shift = 4) and
anti-aliasing, in body-height units placed at any pixel scale (crops and video frames alike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

VIEWS = ("front", "back", "left", "right")
PATTERNS = ("solid", "stripes", "checks", "logo")
_SHIFT = 4
_ONE = 1 << _SHIFT

# Clothing colours (RGB), roughly as frequent as in street scenes: many dark and neutral garments.
DARK = [(25, 25, 28), (55, 55, 60), (30, 35, 70), (60, 42, 32), (35, 55, 40)]
BRIGHT = [(235, 235, 230), (170, 170, 172), (120, 120, 125), (50, 90, 170), (130, 170, 210),
          (180, 40, 40), (110, 30, 40), (60, 130, 70), (110, 110, 60), (200, 180, 140),
          (170, 150, 100), (220, 200, 60), (220, 120, 40), (220, 140, 170), (110, 60, 140),
          (40, 130, 130)]
TROUSERS = [(40, 60, 110), (70, 95, 140), (25, 25, 28), (60, 60, 65), (120, 120, 122),
            (170, 150, 100), (200, 185, 150), (90, 70, 50)]
HAIR = [(20, 18, 16), (45, 30, 20), (90, 60, 35), (190, 160, 100), (150, 150, 150), (120, 50, 25)]
SHOES = [(20, 20, 20), (230, 230, 230), (90, 60, 40), (110, 110, 115), (160, 40, 40)]
SKIN_LIGHT, SKIN_DARK = np.array([238, 205, 180]), np.array([92, 60, 44])


@dataclass(frozen=True)
class Fashion:
    """A domain's clothing habits (season, place): how often dark, short, patterned, carried."""
    dark: float = 0.4
    short_sleeves: float = 0.4
    shorts: float = 0.15
    skirt: float = 0.1
    patterned: float = 0.4
    backpack: float = 0.2
    bag: float = 0.15
    hat: float = 0.12
    bright: tuple[int, ...] | None = None  # indices into BRIGHT worn here (None: all of them)
    pattern_scale: float = 1.0             # stripe / check period multiplier


@dataclass(frozen=True)
class PersonSpec:
    head: float
    torso: float
    shoulder: float
    hip: float
    arm: float
    limb: float
    skin: tuple[int, int, int]          # colours are BGR, as OpenCV draws
    hair: tuple[int, int, int]
    hair_style: str                     # short, long, bald
    upper: tuple[int, int, int]
    upper2: tuple[int, int, int]
    pattern: str
    period: float                       # stripe/check period in body heights
    vertical: bool                      # stripe orientation
    logo: str                           # circle, square, triangle, band
    short_sleeves: bool
    lower: tuple[int, int, int]
    lower_kind: str                     # trousers, shorts, skirt
    shoes: tuple[int, int, int]
    carry: str                          # none, backpack, bag
    carry_color: tuple[int, int, int]
    bag_side: int                       # -1 / +1: the person's side the bag hangs on
    hat: tuple[int, int, int] | None


def _bgr(rgb, rng: np.random.Generator, jitter: float = 0.12) -> tuple[int, int, int]:
    c = np.asarray(rgb, np.float64) * rng.uniform(1 - jitter, 1 + jitter, 3)
    c = c * rng.uniform(0.85, 1.12)
    r, g, b = np.clip(c, 0, 255).astype(int)
    return int(b), int(g), int(r)


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def sample_person(rng: np.random.Generator, fashion: Fashion = Fashion()) -> PersonSpec:
    """A random identity drawn under a domain's clothing habits."""
    bright = BRIGHT if fashion.bright is None else [BRIGHT[i] for i in fashion.bright]
    upper_rgb = _pick(rng, DARK if rng.random() < fashion.dark else bright)
    second_rgb = _pick(rng, bright + DARK)
    patterned = rng.random() < fashion.patterned
    pattern = _pick(rng, list(PATTERNS[1:])) if patterned else "solid"
    u = rng.random()
    lower_kind = "shorts" if u < fashion.shorts else ("skirt" if u < fashion.shorts
                                                      + fashion.skirt else "trousers")
    lower_rgb = _pick(rng, TROUSERS if rng.random() < 0.8 else BRIGHT + DARK)
    v = rng.random()
    carry = "backpack" if v < fashion.backpack else ("bag" if v < fashion.backpack
                                                     + fashion.bag else "none")
    t = rng.random()
    skin = SKIN_LIGHT * (1 - t) + SKIN_DARK * t
    return PersonSpec(
        head=rng.uniform(0.115, 0.14), torso=rng.uniform(0.27, 0.32),
        shoulder=rng.uniform(0.21, 0.29), hip=rng.uniform(0.15, 0.21),
        arm=rng.uniform(0.33, 0.38), limb=rng.uniform(0.85, 1.2),
        skin=_bgr(skin, rng, 0.04), hair=_bgr(_pick(rng, HAIR), rng),
        hair_style=_pick(rng, ["short", "short", "long", "bald"]),
        upper=_bgr(upper_rgb, rng), upper2=_bgr(second_rgb, rng), pattern=pattern,
        period=rng.uniform(0.03, 0.06) * fashion.pattern_scale, vertical=rng.random() < 0.25,
        logo=_pick(rng, ["circle", "square", "triangle", "band"]),
        short_sleeves=rng.random() < fashion.short_sleeves,
        lower=_bgr(lower_rgb, rng), lower_kind=lower_kind, shoes=_bgr(_pick(rng, SHOES), rng),
        carry=carry, carry_color=_bgr(_pick(rng, DARK + BRIGHT), rng),
        bag_side=int(rng.choice([-1, 1])),
        hat=_bgr(_pick(rng, DARK + BRIGHT), rng) if rng.random() < fashion.hat else None,
    )


def _shade(color: tuple[int, int, int], k: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * k)) for c in color)  # type: ignore[return-value]


class _Pen:
    """Draws in body units (x right, y down, 1 = body height) at a pixel position and scale,
    mirrored for left-facing views, and tracks the pixel extent of what it drew."""

    def __init__(self, img: np.ndarray, cx: float, top: float, height: float, mirror: int,
                 mask: np.ndarray | None):
        self.img, self.cx, self.top, self.h, self.m = img, cx, top, height, mirror
        self.mask = mask
        self.lo = [math.inf, math.inf]
        self.hi = [-math.inf, -math.inf]

    def px(self, x: float, y: float) -> tuple[int, int]:
        X, Y = self.cx + self.m * x * self.h, self.top + y * self.h
        self.lo = [min(self.lo[0], X), min(self.lo[1], Y)]
        self.hi = [max(self.hi[0], X), max(self.hi[1], Y)]
        return int(round(X * _ONE)), int(round(Y * _ONE))

    def _targets(self, color, masked: bool):
        yield self.img, color
        if masked and self.mask is not None:
            yield self.mask, 255

    def poly(self, pts, color, masked: bool = False) -> None:
        arr = np.array([self.px(x, y) for x, y in pts], np.int32)
        for img, c in self._targets(color, masked):
            cv2.fillConvexPoly(img, arr, c, cv2.LINE_AA, _SHIFT)

    def ellipse(self, x, y, ax, ay, color, masked: bool = False, start=0, end=360) -> None:
        c = self.px(x, y)
        self.px(x - ax, y - ay), self.px(x + ax, y + ay)
        axes = (max(1, int(ax * self.h * _ONE)), max(1, int(ay * self.h * _ONE)))
        s, e = (start, end) if self.m > 0 else (180 - end, 180 - start)
        for img, col in self._targets(color, masked):
            cv2.ellipse(img, c, axes, 0, s, e, col, -1, cv2.LINE_AA, _SHIFT)

    def limb(self, p, q, w1, w2, color, masked: bool = False) -> None:
        """A tapered limb from p (width w1) to q (width w2) with round ends."""
        dx, dy = q[0] - p[0], q[1] - p[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.poly([(p[0] + nx * w1 / 2, p[1] + ny * w1 / 2), (q[0] + nx * w2 / 2, q[1] + ny * w2 / 2),
                   (q[0] - nx * w2 / 2, q[1] - ny * w2 / 2), (p[0] - nx * w1 / 2, p[1] - ny * w1 / 2)],
                  color, masked)
        self.ellipse(p[0], p[1], w1 / 2, w1 / 2, color, masked)
        self.ellipse(q[0], q[1], w2 / 2, w2 / 2, color, masked)


def _joint(origin, length: float, angle: float):
    """End point of a segment hanging from `origin` at `angle` (radians from straight down,
    positive = forward/outward)."""
    return origin[0] + length * math.sin(angle), origin[1] + length * math.cos(angle)


def _legs(spec: PersonSpec, side: bool, swing: float, hip_y: float, leg: float):
    """(hip, knee, ankle) per leg, near leg last, in body units before the vertical bob."""
    legs = []
    for k, s in ((-1, -swing), (1, swing)):
        if side:
            thigh = 0.45 * s
            shin = thigh - (0.45 * max(0.0, -s))  # the trailing leg bends at the knee
            hip = (0.0, hip_y)
        else:
            thigh = shin = k * 0.05
            hip = (k * spec.hip * 0.25, hip_y)
        lift = 0.0 if side else 0.08 * max(0.0, s)
        knee = _joint(hip, leg * (0.5 - lift), thigh)
        legs.append((hip, knee, _joint(knee, leg * 0.5, shin)))
    return legs


def draw_person(img: np.ndarray, spec: PersonSpec, view: str, phase: float, cx: float,
                top: float, height: float) -> tuple[float, float, float, float]:
    """Draw `spec` walking at `phase` (radians) seen from `view`, head top at `top`, centred on
    `cx`, `height` pixels tall; returns the drawn box (x0, y0, x1, y1) in pixels."""
    side = view in ("left", "right")
    swing = math.sin(phase)
    sy = spec.head + 0.035
    hy = sy + spec.torso
    foot = 0.025
    leg = 1.0 - foot - hy
    legs = _legs(spec, side, swing, hy, leg)
    bob = (1.0 - foot) - max(a[1] for _, _, a in legs)  # keep the lowest foot on the ground
    mask = np.zeros(img.shape[:2], np.uint8) if spec.pattern in ("stripes", "checks") else None
    pen = _Pen(img, cx, top + bob * height, height, -1 if view == "left" else 1, mask)
    leg_w, arm_w = 0.075 * spec.limb, 0.05 * spec.limb
    sw, hw = spec.shoulder / 2, spec.hip / 2
    if side:
        sw, hw = sw * 0.5, hw * 0.7

    # Legs and shoes, far leg first and darker in side view.
    for i, (hip, knee, ankle) in enumerate(legs):
        k = 0.78 if side and i == 0 else 1.0
        skin, lower = _shade(spec.skin, k), _shade(spec.lower, k)
        if spec.lower_kind == "trousers":
            pen.limb(hip, knee, leg_w * 1.1, leg_w * 0.85, lower)
            pen.limb(knee, ankle, leg_w * 0.85, leg_w * 0.65, lower)
        else:
            pen.limb(hip, knee, leg_w * 0.9, leg_w * 0.7, skin)
            pen.limb(knee, ankle, leg_w * 0.7, leg_w * 0.55, skin)
            if spec.lower_kind == "shorts":
                mid = ((hip[0] + knee[0]) / 2, (hip[1] + knee[1]) / 2)
                pen.limb(hip, mid, leg_w * 1.15, leg_w * 1.0, lower)
        fx = 0.018 if side else 0.0
        pen.ellipse(ankle[0] + fx, ankle[1] + 0.008, 0.04 if side else 0.028, 0.016,
                    _shade(spec.shoes, k))
    if spec.lower_kind == "skirt":
        pen.poly([(-hw, hy - 0.02), (hw, hy - 0.02), (hw * 1.5, hy + leg * 0.38),
                  (-hw * 1.5, hy + leg * 0.38)], spec.lower)
    elif spec.lower_kind != "trousers" or not side:
        pen.poly([(-hw, hy - 0.03), (hw, hy - 0.03), (hw, hy + 0.03), (-hw, hy + 0.03)],
                 spec.lower)

    # Arms: hang from the shoulders and swing against the legs.
    arms = []
    for k in (-1, 1):
        if side:
            shoulder, a_up = (0.0, sy + 0.02), -0.5 * swing * k
        else:
            shoulder, a_up = (k * (sw - arm_w * 0.4), sy + 0.02), k * 0.12
        elbow = _joint(shoulder, spec.arm * 0.48, a_up)
        hand = _joint(elbow, spec.arm * 0.5, a_up + (0.35 if side else k * 0.05))
        arms.append((shoulder, elbow, hand))
    far_arm, near_arms = (arms[0], arms[1:]) if side else (None, arms)
    if far_arm is not None:
        s, e, h = far_arm
        sleeve = _shade(spec.upper, 0.75)
        pen.limb(s, e, arm_w, arm_w * 0.85, sleeve)
        pen.limb(e, h, arm_w * 0.85, arm_w * 0.7,
                 _shade(spec.skin, 0.75) if spec.short_sleeves else sleeve)

    # Upper clothing (torso + sleeves) goes into the pattern mask.
    lean = 0.015 if side else 0.0
    pen.poly([(-sw * 0.55 + lean, sy - 0.015), (sw * 0.55 + lean, sy - 0.015), (sw, sy + 0.01),
              (hw * 1.05, hy + 0.02), (-hw * 1.05, hy + 0.02), (-sw, sy + 0.01)], spec.upper,
             masked=True)
    for s, e, h in near_arms:
        pen.limb(s, e, arm_w * 1.1, arm_w * 0.9, spec.upper, masked=True)
        if not spec.short_sleeves:
            pen.limb(e, h, arm_w * 0.9, arm_w * 0.75, spec.upper, masked=True)
    if mask is not None:
        _apply_pattern(img, mask, spec, pen)
    for s, e, h in near_arms:
        if spec.short_sleeves:
            pen.limb(((s[0] + e[0] * 2) / 3, (s[1] + e[1] * 2) / 3), h, arm_w * 0.8,
                     arm_w * 0.7, spec.skin)
        pen.ellipse(h[0], h[1], arm_w * 0.55, arm_w * 0.6, spec.skin)
    if spec.pattern == "logo" and view == "front":
        _draw_logo(pen, spec, (sy + hy) / 2 - 0.02)

    _draw_head(pen, spec, view, sy)
    _draw_carry(pen, spec, view, sy, hy, sw, hw)
    x0, y0 = pen.lo
    x1, y1 = pen.hi
    return x0, y0, x1, y1


def _apply_pattern(img: np.ndarray, mask: np.ndarray, spec: PersonSpec, pen: _Pen) -> None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    period = max(2.0, spec.period * pen.h)
    yy = (np.arange(y0, y1, dtype=np.float32)[:, None] - pen.top) / period
    xx = (np.arange(x0, x1, dtype=np.float32)[None, :] - pen.cx) / period
    if spec.pattern == "stripes":
        on = (np.floor(xx if spec.vertical else yy) % 2).astype(np.float32)
        on = np.broadcast_to(on, (y1 - y0, x1 - x0))
    else:
        on = ((np.floor(yy) + np.floor(xx)) % 2).astype(np.float32)
    alpha = (mask[y0:y1, x0:x1].astype(np.float32) / 255.0 * on)[..., None]
    roi = img[y0:y1, x0:x1].astype(np.float32)
    roi += alpha * (np.array(spec.upper2, np.float32) - roi)
    img[y0:y1, x0:x1] = roi.astype(np.uint8)


def _draw_logo(pen: _Pen, spec: PersonSpec, y: float) -> None:
    r = 0.035
    if spec.logo == "circle":
        pen.ellipse(0, y, r, r, spec.upper2)
    elif spec.logo == "square":
        pen.poly([(-r, y - r), (r, y - r), (r, y + r), (-r, y + r)], spec.upper2)
    elif spec.logo == "triangle":
        pen.poly([(0, y - r), (r, y + r), (-r, y + r)], spec.upper2)
    else:
        pen.poly([(-spec.shoulder / 2, y - r / 2), (spec.shoulder / 2, y - r / 2),
                  (spec.hip / 2, y + r / 2), (-spec.hip / 2, y + r / 2)], spec.upper2)


def _draw_head(pen: _Pen, spec: PersonSpec, view: str, sy: float) -> None:
    h = spec.head
    w = h * 0.39
    pen.poly([(-w * 0.45, h * 0.8), (w * 0.45, h * 0.8), (w * 0.45, sy), (-w * 0.45, sy)],
             spec.skin)
    long_hair = spec.hair_style == "long"
    side = view in ("left", "right")
    if long_hair and view != "back":
        pen.poly([(-w * 1.05, h * 0.45), (w * (0.2 if side else 1.05), h * 0.45),
                  (w * (0.2 if side else 1.05), sy + 0.05), (-w * 1.05, sy + 0.05)], spec.hair)
    if view == "back":
        pen.ellipse(0, h * 0.5, w, h * 0.5, spec.hair if spec.hair_style != "bald" else spec.skin)
        if long_hair:
            pen.poly([(-w, h * 0.5), (w, h * 0.5), (w * 0.9, sy + 0.07), (-w * 0.9, sy + 0.07)],
                     spec.hair)
    elif side:
        pen.ellipse(0, h * 0.5, w * 0.95, h * 0.5, spec.skin)
        if spec.hair_style != "bald":
            pen.ellipse(-w * 0.2, h * 0.42, w * 0.85, h * 0.42, spec.hair)
        pen.ellipse(w * 0.6, h * 0.45, w * 0.12, w * 0.1, _shade(spec.skin, 0.8))
    else:
        pen.ellipse(0, h * 0.52, w, h * 0.48, spec.skin)
        if spec.hair_style != "bald":
            pen.ellipse(0, h * 0.4, w * 1.04, h * 0.4, spec.hair, start=180, end=360)
        for k in (-1, 1):
            pen.ellipse(k * w * 0.4, h * 0.5, w * 0.12, w * 0.08, (30, 30, 30))
    if spec.hat is not None:
        pen.ellipse(0, h * 0.3, w * 1.08, h * 0.3, spec.hat, start=180, end=360)
        brim = (w * 1.7, w * 0.1) if side else (w * 1.15, w * 0.07)
        pen.poly([(-w * 1.1, h * 0.27), (brim[0], h * 0.27), (brim[0], h * 0.33),
                  (-w * 1.1, h * 0.33)], spec.hat)


def _draw_carry(pen: _Pen, spec: PersonSpec, view: str, sy: float, hy: float, sw: float,
                hw: float) -> None:
    c, strap = spec.carry_color, _shade(spec.carry_color, 0.7)
    t = 0.012
    if spec.carry == "backpack":
        if view == "front":
            for k in (-1, 1):
                pen.limb((k * sw * 0.55, sy), (k * sw * 0.5, sy + spec.torso * 0.55), t, t, strap)
        elif view == "back":
            pen.poly([(-sw * 0.75, sy + 0.02), (sw * 0.75, sy + 0.02), (sw * 0.8, hy - 0.05),
                      (-sw * 0.8, hy - 0.05)], c)
            pen.poly([(-sw * 0.7, sy + 0.06), (sw * 0.7, sy + 0.06), (sw * 0.7, sy + 0.075),
                      (-sw * 0.7, sy + 0.075)], strap)
        else:
            pen.poly([(-sw - 0.005, sy + 0.02), (-sw - 0.07, sy + 0.04), (-sw - 0.07, hy - 0.06),
                      (-sw - 0.005, hy - 0.05)], c)
            pen.limb((0.01, sy), (-sw * 0.8, sy + 0.1), t, t, strap)
    elif spec.carry == "bag":
        # Seen from behind, the person's sides swap in the image.
        k = spec.bag_side * (-1 if view == "back" else 1)
        if view in ("left", "right"):
            k = 0
        pen.limb((-k * sw * 0.7 if k else 0.0, sy), (k * hw * 1.2, hy - 0.01), t, t, strap)
        bx = k * (hw + 0.03) if k else 0.0
        pen.poly([(bx - 0.045, hy - 0.03), (bx + 0.045, hy - 0.03), (bx + 0.045, hy + 0.06),
                  (bx - 0.045, hy + 0.06)], c)
