"""Frames of one camera: an ``img1/`` folder of numbered images or a video file.

A MOTChallenge sequence keeps frame ``n`` as ``img1/%06d.jpg`` (any image extension; the number
is the file name). A video file (anything OpenCV's FFmpeg backend opens) numbers its frames
from 1 in decoding order. Frames are user files: images are read as regular files with the
pixel limit of `tal_infer.images`; a video file is checked to be a regular file before OpenCV
opens it, and one that cannot be opened is an error naming it.

A frame that is missing (a gap in the numbers, or a detection frame past the end) or cannot
be decoded is reported as `MissingFrame`; with ``on_error="fail"`` the first one stops the run
(`DataError` naming the file), with ``"skip"`` it is yielded and counted, and its detections go
unused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import DataError
from ..images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, read_image
from ..user_files import UserFileError, check_regular


@dataclass(frozen=True)
class Frame:
    number: int
    image: np.ndarray


@dataclass(frozen=True)
class MissingFrame:
    number: int
    source: str
    reason: str


def numbered_images(folder: Path) -> dict[int, Path]:
    """``{frame number: path}`` of the image files in ``folder`` named by number."""
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.stem.isdigit():
            found.setdefault(int(path.stem), path)
    return found


def read_frames(source: str | os.PathLike, last: int = 0, on_error: str = "fail",
                max_pixels: int | None = DEFAULT_MAX_PIXELS
                ) -> Iterator[Frame | MissingFrame]:
    """Frames 1 .. the last one present (at least ``last``) of an image folder or video file."""
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    source = Path(source)
    frames = _folder(source, last, max_pixels) if source.is_dir() else _video(source, last)
    for item in frames:
        if isinstance(item, MissingFrame) and on_error == "fail":
            raise DataError(f"{item.source}: {item.reason} (frame {item.number}; "
                            "--on-missing-frame skip goes on without it)")
        yield item


def _folder(folder: Path, last: int, max_pixels: int | None
            ) -> Iterator[Frame | MissingFrame]:
    files = numbered_images(folder)
    for number in range(1, max([last, *files]) + 1):
        path = files.get(number)
        if path is None:
            yield MissingFrame(number, str(folder / f"{number:06d}.*"), "frame file missing")
            continue
        try:
            check_regular(path)
            yield Frame(number, read_image(path, max_pixels))
        except (ImageError, UserFileError) as err:
            yield MissingFrame(number, str(path), err.problem)


def _video(path: Path, last: int) -> Iterator[Frame | MissingFrame]:
    try:
        check_regular(path)
    except UserFileError as err:
        raise DataError(str(err)) from None
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: cannot be opened as a video (not a video file, or a "
                            "codec OpenCV lacks)")
        number = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            number += 1
            yield Frame(number, image)
        if number == 0:
            raise DataError(f"{path}: no frame could be decoded")
        for missing in range(number + 1, last + 1):
            yield MissingFrame(missing, str(path), f"the video ends at frame {number}")
    finally:
        capture.release()
