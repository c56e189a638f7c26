"""A camera network on disk: one MOTChallenge sequence folder per camera.

``NETWORK/<camera>/`` holds ``det/det.txt`` (required), the frames as ``img1/`` (or the folder
``seqinfo.ini`` names as ``imDir``) or as one video file in the camera folder (``.mp4``,
``.avi``, ``.mkv``, ``.mov``, ``.m4v``), optionally ``gt/gt.txt`` and ``seqinfo.ini`` (its
``frameRate`` gives the clock; 25 fps otherwise). Every detection and ground-truth file is read
and checked when the network is opened, before any frame is decoded, so a malformed line stops
the run before it has done (or written) anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .mot import read_detections, read_ground_truth, read_seqinfo

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v")
DEFAULT_FPS = 25.0


@dataclass
class Camera:
    index: int
    name: str
    frames: Path          # an image folder or a video file
    detections: dict[int, np.ndarray]
    ground_truth: dict[int, tuple[np.ndarray, np.ndarray]] | None
    fps: float
    length: int           # frames the sequence should have (seqinfo, detections)


def _frames_source(folder: Path, info: dict[str, str]) -> Path:
    images = folder / info.get("imdir", "img1")
    if images.is_dir():
        return images
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if videos:
        return videos[0]
    raise DataError(f"{folder}: no frames ({images.name}/ folder or a video file "
                    f"{'/'.join(VIDEO_EXTENSIONS)})")


def _number(info: dict[str, str], key: str, folder: Path, default: float) -> float:
    try:
        value = float(info.get(key.lower(), default))
    except ValueError:
        raise DataError(f"{folder / 'seqinfo.ini'}: {key} is not a number") from None
    if not value > 0 and key == "frameRate":
        raise DataError(f"{folder / 'seqinfo.ini'}: frameRate must be positive")
    return value


def open_network(root: str | os.PathLike, names: Sequence[str] | None = None) -> list[Camera]:
    """The cameras under ``root`` (all folders with ``det/det.txt``, by name, or ``names``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if names is None:
        names = sorted(p.name for p in root.iterdir() if (p / "det" / "det.txt").exists())
        if not names:
            raise DataError(f"{root}: no camera folders with det/det.txt")
    cameras = []
    for index, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: camera folder not found")
        info = read_seqinfo(folder / "seqinfo.ini")
        detections = read_detections(folder / "det" / "det.txt")
        gt_path = folder / "gt" / "gt.txt"
        gt = read_ground_truth(gt_path) if gt_path.exists() else None
        length = int(_number(info, "seqLength", folder, 0))
        length = max([length, *detections])
        cameras.append(Camera(index, name, _frames_source(folder, info), detections, gt,
                              _number(info, "frameRate", folder, DEFAULT_FPS), length))
    return cameras
