"""Visual report of a matching run: rank lists (paper Fig. 5) and QAConv correspondences (Fig. 6).

``write_report`` writes ``index.html`` with, per query, a PNG rank list (the query, then its
top-k with green / red borders when identities are known, grey otherwise) and a PNG of the
local correspondences QAConv found for the query and its best match: for every query location
its best-matching gallery location (the argmax behind QAConv's ``max_j S``), the strongest few
drawn as lines. Images are drawn with OpenCV only (no plotting library in the runtime). File
names reach the HTML only through `html.escape`; the PNGs get generated names.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .bundle import Bundle
from .features import feature_name
from .images import DEFAULT_MAX_PIXELS, ImageError, read_image

CELL = (128, 64)  # (height, width) of one crop in a rank list
BORDER = 4
GREEN, RED, GREY, BLUE = (0, 170, 0), (0, 0, 220), (160, 160, 160), (200, 120, 0)


def correspondences(query_map: np.ndarray, gallery_map: np.ndarray, top: int = 12
                    ) -> list[tuple[int, int, float]]:
    """(query location, gallery location, similarity) of the ``top`` strongest best matches.

    Maps are ``[HW, C]`` (L2-normalized locations, row-major over (h, w)); each query location
    is paired with its most similar gallery location, as QAConv's max over gallery locations.
    """
    s = query_map.astype(np.float32) @ gallery_map.astype(np.float32).T
    best = s.argmax(axis=1)
    value = s[np.arange(len(best)), best]
    order = np.argsort(-value, kind="stable")[:top]
    return [(int(i), int(best[i]), float(value[i])) for i in order]


def draw_correspondences(query_img: np.ndarray, gallery_img: np.ndarray, hw: tuple[int, int],
                         pairs: Sequence[tuple[int, int, float]], size: tuple[int, int] = (256, 128)
                         ) -> np.ndarray:
    """Query and gallery side by side with a line per (query loc, gallery loc, similarity)."""
    height, width = size
    canvas = np.full((height, 2 * width + 16, 3), 255, np.uint8)
    canvas[:, :width] = cv2.resize(query_img, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas[:, width + 16:] = cv2.resize(gallery_img, (width, height),
                                        interpolation=cv2.INTER_LINEAR)
    h, w = hw
    strongest = max((v for _, _, v in pairs), default=1.0)

    def centre(loc: int, offset: int) -> tuple[int, int]:
        return (offset + int((loc % w + 0.5) * width / w), int((loc // w + 0.5) * height / h))

    for qi, gj, value in pairs:
        shade = float(np.clip(value / strongest, 0.0, 1.0)) if strongest > 0 else 1.0
        colour = (0, int(255 * shade), int(255 * (1 - shade)))
        a, b = centre(qi, 0), centre(gj, width + 16)
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 3, colour, -1)
        cv2.circle(canvas, b, 3, colour, -1)
    return canvas


def rank_list_image(query_img: np.ndarray, gallery_imgs: Sequence[np.ndarray],
                    scores: Sequence[float], correct: Sequence[bool | None]) -> np.ndarray:
    """One row: the query (blue border), a gap, then the ranked crops with their scores."""
    cell_h, cell_w = CELL
    text_h, gap = 18, 12
    tiles = [_tile(query_img, BLUE)] + [
        _tile(img, GREY if ok is None else GREEN if ok else RED)
        for img, ok in zip(gallery_imgs, correct)]
    tile_w = cell_w + 2 * BORDER
    canvas = np.full((cell_h + 2 * BORDER + text_h, len(tiles) * tile_w + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        x = i * tile_w + (gap if i else 0)
        canvas[:tile.shape[0], x:x + tile_w] = tile
        label = "query" if i == 0 else f"{i}: {scores[i - 1]:.2f}"
        cv2.putText(canvas, label, (x + 2, canvas.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_report(out_dir: str | os.PathLike, bundle: Bundle, query_paths: Sequence[str],
                 gallery_paths: Sequence[str], rows: Sequence[Sequence[tuple[int, float]]],
                 query_pids: np.ndarray | None, gallery_pids: np.ndarray | None,
                 query_features: dict[str, np.ndarray],
                 gallery_features_of: Callable[[np.ndarray], dict[str, np.ndarray]],
                 limit: int = 20, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """Write ``index.html`` + PNGs for the first ``limit`` queries; returns the page's path.

    Crops are read again for the thumbnails, under the same ``max_pixels`` as extraction."""
    out = Path(out_dir)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "correspondences").mkdir(exist_ok=True)
    key = _correspondence_key(bundle)
    hw = bundle.features[key].hw
    sections = []
    for qi, (q_path, row) in enumerate(list(zip(query_paths, rows))[:limit]):
        cols = [c for c, _ in row]
        correct = [None if query_pids is None else bool(gallery_pids[c] == query_pids[qi])
                   for c in cols]
        q_img = _load(q_path, max_pixels)
        strip = rank_list_image(q_img, [_load(gallery_paths[c], max_pixels) for c in cols],
                                [s for _, s in row], correct)
        rank_png = f"ranks/q{qi:05d}.png"
        _write_png(out / rank_png, strip)
        pair_png = None
        if cols:
            q_map = _map(query_features[key][qi])
            g_map = _map(gallery_features_of(np.array(cols[:1]))[key][0])
            pair_png = f"correspondences/q{qi:05d}.png"
            _write_png(out / pair_png, draw_correspondences(
                q_img, _load(gallery_paths[cols[0]], max_pixels), hw, correspondences(q_map, g_map)))
        sections.append(_section(q_path, [gallery_paths[c] for c in cols], row, correct,
                                 rank_png, pair_png))
    page = out / "index.html"
    page.write_text(_PAGE.format(model=html.escape(bundle.name), key=html.escape(key),
                                 count=len(sections), total=len(query_paths),
                                 body="\n".join(sections)), encoding="utf-8")
    return page


def _correspondence_key(bundle: Bundle) -> str:
    """The finest map of the DI stream (one per image), else of the DS experts."""
    for stream in ("di", "ds"):
        for scale in bundle.matching.scales:
            if feature_name(stream, scale) in bundle.features:
                return feature_name(stream, scale)
    return next(iter(bundle.features))


def _map(feature: np.ndarray) -> np.ndarray:
    """[HW, C] float32 of one item; DS [K, HW, C] -> the experts' mean, L2-normalized again."""
    feature = feature.astype(np.float32)
    if feature.ndim == 3:
        feature = feature.mean(axis=0)
        feature = feature / np.maximum(np.linalg.norm(feature, axis=1, keepdims=True), 1e-12)
    return feature


def _load(path: str, max_pixels: int | None) -> np.ndarray:
    try:
        return read_image(path, max_pixels)
    except ImageError:  # removed since it was indexed: show a blank crop
        return np.full((*CELL, 3), 200, np.uint8)


def _tile(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    cell_h, cell_w = CELL
    resized = cv2.resize(img, (cell_w, cell_h), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(resized, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT,
                              value=colour)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ImageError(path, "could not encode the PNG")
    path.write_bytes(data.tobytes())


def _section(q_path, g_paths, row, correct, rank_png, pair_png) -> str:
    marks = {None: "", True: ' class="hit"', False: ' class="miss"'}
    items = "".join(
        f"<tr{marks[ok]}><td>{r + 1}</td><td>{html.escape(Path(g).name)}</td>"
        f"<td>{s:.4f}</td></tr>" for r, (g, (_, s), ok) in enumerate(zip(g_paths, row, correct)))
    pair = (f'<p>QAConv correspondences with rank 1 (strongest local matches):<br>'
            f'<img src="{pair_png}" alt="correspondences"></p>' if pair_png else "")
    return (f'<section><h2>{html.escape(Path(q_path).name)}</h2>'
            f'<p class="path">{html.escape(str(q_path))}</p>'
            f'<img src="{rank_png}" alt="rank list"><table><tr><th>rank</th><th>gallery</th>'
            f'<th>score</th></tr>{items}</table>{pair}</section>')


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tal-infer report</title>
<style>body{{font-family:sans-serif;margin:1em}} section{{margin-bottom:2em}}
table{{border-collapse:collapse;font-size:small}} td,th{{padding:2px 8px}}
.hit td{{color:#080}} .miss td{{color:#c00}} .path{{color:#666;font-size:small}}</style>
</head><body><h1>tal-infer report</h1>
<p>model {model}; {count} of {total} queries; correspondences from {key}
(green border = same identity, red = other identity, grey = unknown).</p>
{body}
</body></html>
"""
