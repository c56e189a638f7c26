"""MOTChallenge files: ``det/det.txt`` and ``gt/gt.txt`` in, tracks with global ids out.

Rows are ``frame,id,left,top,width,height,conf,...`` (MOTChallenge; frames from 1). Files come
from users, so they are read as regular files of bounded size (`tal_infer.user_files`) and every
line is checked before any work starts: the first bad line stops the run with one error naming
the file and line number (`MotFormatError`), so nothing is half-processed. Blank lines are
ignored. Boxes become float xyxy arrays (detectors' form, what `embed_boxes` takes).

- detections: ``{frame: array [n, 5]}`` of ``x0, y0, x1, y1, conf``;
- ground truth: ``{frame: (ids [n], boxes [n, 4])}``; rows whose 7th value (the MOTChallenge
  "consider" flag) is 0 are left out, as the MOTChallenge evaluation does;
- tracks are written atomically: ``frame,global_id,left,top,width,height,conf,-1,-1,-1``.
"""
from __future__ import annotations

import configparser
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError
from ..user_files import UserFileError, read_regular

MAX_MOT_FILE_BYTES = 512 * 1024 * 1024  # a day of a busy camera at 25 fps is well under this
MAX_SEQINFO_BYTES = 64 * 1024


class MotFormatError(DataError):
    """A malformed MOTChallenge file; the message names the file and line."""


def _read_text(path: Path, limit: int) -> str:
    try:
        data = read_regular(path, limit)
    except UserFileError as err:
        raise DataError(str(err)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MotFormatError(f"{path}: not a text file ({err.reason} at byte {err.start})") \
            from None


def _rows(path: Path, min_values: int) -> Iterable[tuple[int, list[float]]]:
    """(line number, values) of the non-blank lines, each checked: at least ``min_values``
    numbers, a whole frame number >= 1, finite box values, non-negative width and height."""
    for number, line in enumerate(_read_text(path, MAX_MOT_FILE_BYTES).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < min_values:
            raise MotFormatError(f"{where}: expected at least {min_values} comma-separated "
                                 f"values, got {len(parts)}: {line.strip()[:80]!r}")
        try:
            values = [float(p) for p in parts[:min_values]]
        except ValueError:
            raise MotFormatError(f"{where}: not a number in {line.strip()[:80]!r}") from None
        frame = values[0]
        if not math.isfinite(frame) or frame != int(frame) or frame < 1:
            raise MotFormatError(f"{where}: frame number must be a whole number >= 1, got "
                                 f"{parts[0]!r}")
        if not all(math.isfinite(v) for v in values[2:6]):
            raise MotFormatError(f"{where}: box values must be finite numbers")
        if values[4] < 0 or values[5] < 0:
            raise MotFormatError(f"{where}: negative box width or height")
        yield number, values


def read_detections(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """``{frame: [n, 5] x0, y0, x1, y1, conf}`` from a MOTChallenge ``det.txt``."""
    path = Path(path)
    by_frame: dict[int, list[list[float]]] = {}
    for _, v in _rows(path, 7):
        by_frame.setdefault(int(v[0]), []).append([v[2], v[3], v[2] + v[4], v[3] + v[5], v[6]])
    return {f: np.array(rows, np.float64) for f, rows in sorted(by_frame.items())}


def read_ground_truth(path: str | os.PathLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{frame: (ids [n], xyxy boxes [n, 4])}`` from a MOTChallenge ``gt.txt`` (rows with the
    consider flag 0 left out)."""
    path = Path(path)
    by_frame: dict[int, list[tuple[int, list[float]]]] = {}
    for number, v in _rows(path, 7):
        if v[1] != int(v[1]):
            raise MotFormatError(f"{path}:{number}: identity must be a whole number")
        if v[6] == 0:
            continue
        by_frame.setdefault(int(v[0]), []).append(
            (int(v[1]), [v[2], v[3], v[2] + v[4], v[3] + v[5]]))
    return {f: (np.array([i for i, _ in rows], np.int64),
                np.array([b for _, b in rows], np.float64).reshape(-1, 4))
            for f, rows in sorted(by_frame.items())}


def read_seqinfo(path: str | os.PathLike) -> dict[str, str]:
    """The ``[Sequence]`` section of a ``seqinfo.ini`` (lower-case keys); empty when absent."""
    path = Path(path)
    if not path.exists():
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read_string(_read_text(path, MAX_SEQINFO_BYTES), source=str(path))
    except configparser.Error as err:
        raise MotFormatError(f"{path}: not an ini file ({str(err).splitlines()[0]})") from None
    return dict(parser["Sequence"]) if parser.has_section("Sequence") else {}


def format_track_rows(rows: Iterable[tuple[int, int, np.ndarray, float]]) -> str:
    """MOTChallenge lines of (frame, id, xyxy box, conf) rows, sorted by frame then id."""
    lines = []
    for frame, track, box, conf in sorted(rows, key=lambda r: (r[0], r[1])):
        x0, y0, x1, y1 = (float(v) for v in box)
        lines.append(f"{frame},{track},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},"
                     f"{conf:.3f},-1,-1,-1\n")
    return "".join(lines)


def write_tracks(path: str | os.PathLike, rows: Iterable[tuple[int, int, np.ndarray, float]]
                 ) -> None:
    """Write (frame, id, xyxy box, conf) rows as a MOTChallenge file, atomically."""
    with atomic_file(path, "w") as f:
        f.write(format_track_rows(rows))
