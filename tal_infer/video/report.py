"""The HTML report of a `tal-track` run: one row per global identity, a strip of crops per camera.

One self-contained ``index.html`` (crops inlined as PNG data, so the page is one file that is
written atomically and can be mailed): per global identity, the cameras it was seen in, each
with its tracklets' frame spans and a strip of the best crops of their samples (by quality).
Camera names and everything else from the user reach the page only through `html.escape`.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..atomic import atomic_file
from .tracklets import Tracklet

CELL = (96, 48)  # (height, width) of one crop in a strip
STRIP = 6        # crops per camera and identity


def _strip(crops: Sequence[np.ndarray]) -> str:
    tiles = [cv2.resize(c, (CELL[1], CELL[0]), interpolation=cv2.INTER_AREA) for c in crops]
    ok, data = cv2.imencode(".png", cv2.hconcat(tiles))
    return ("data:image/png;base64," + base64.b64encode(data.tobytes()).decode()) if ok else ""


def identity_rows(tracklets: Sequence[Tracklet], global_ids: dict[tuple[int, int], int],
                  camera_names: Sequence[str]) -> str:
    """The table rows: one per global identity, cameras in network order."""
    by_identity: dict[int, dict[int, list[Tracklet]]] = {}
    for t in tracklets:
        by_identity.setdefault(global_ids[t.key], {}).setdefault(t.camera, []).append(t)
    rows = []
    for gid in sorted(by_identity):
        cells = []
        for camera in sorted(by_identity[gid]):
            ts = by_identity[gid][camera]
            ranked = sorted(((q, c) for t in ts for q, c in zip(t.sample.quality, t.sample.crops)),
                            key=lambda qc: -qc[0])[:STRIP]
            spans = ", ".join(f"track {t.track}: frames {t.start}-{t.end}" for t in ts)
            cells.append(f'<div class="cam"><b>{html.escape(camera_names[camera])}</b> '
                         f'<span class="span">{html.escape(spans)}</span><br>'
                         f'<img src="{_strip([c for _, c in ranked])}" alt="crops"></div>')
        rows.append(f'<tr><td class="gid">{gid}</td><td>{len(by_identity[gid])}</td>'
                    f'<td>{"".join(cells)}</td></tr>')
    return "\n".join(rows)


def write_report(path: str | os.PathLike, tracklets: Sequence[Tracklet],
                 global_ids: dict[tuple[int, int], int], camera_names: Sequence[str],
                 title: str) -> Path:
    """Write the report page to ``path`` (a file, replaced atomically)."""
    path = Path(path)
    page = _PAGE.format(title=html.escape(title),
                        identities=len(set(global_ids.values())), tracklets=len(tracklets),
                        rows=identity_rows(tracklets, global_ids, camera_names))
    with atomic_file(path, "w") as f:
        f.write(page)
    return path


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tal-track report</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top}}
.cam{{margin-bottom:6px}} .span{{color:#666;font-size:small}} .gid{{font-weight:bold}}</style>
</head><body><h1>tal-track report</h1>
<p>{title}: {identities} global identities from {tracklets} tracklets.</p>
<table><tr><th>global id</th><th>cameras</th><th>crops per camera (best first)</th></tr>
{rows}
</table></body></html>
"""
