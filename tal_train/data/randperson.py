"""Loader for the RandPerson subset (QAConv-GS's 8,000-identity subset used by the paper).

Images sit in ``randperson_subset/`` (the official archive nests it as
``randperson_subset/randperson_subset/``; both are accepted), named
``<pid>_s<scene>_c<camera>_f<frame>.jpg`` (the dataset README writes ``<pid>_c.._s.._f..``;
either field order is read). A camera is a (scene, camera) pair: camids number the pairs found,
in sorted order, which on the full subset equals QAConv-GS's per-scene camera offsets. The
timestamp is frame / 24 fps (the render rate QAConv-GS assumes), seconds from the start of the
scene. RandPerson has a training split only, so it can be a source but never a target.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from tal_infer.errors import DataError
from tal_infer.images import list_images

from .records import Dataset, ImageRecord

SUBSET_DIR = "randperson_subset"
RANDPERSON_FPS = 24.0
_NAME = re.compile(r"^(\d+)_(?:s(\d+)_c(\d+)|c(\d+)_s(\d+))_f(\d+)")


def randperson_image_dir(root: Path) -> Path:
    nested = root / SUBSET_DIR
    return nested if nested.is_dir() else root


def parse_randperson_name(name: str) -> tuple[int, int, int, int] | None:
    """(pid, scene, camera, frame) from a RandPerson file name, None when it does not match."""
    m = _NAME.match(name)
    if m is None:
        return None
    pid, s1, c1, c2, s2, frame = m.groups()
    scene, cam = (s1, c1) if s1 is not None else (s2, c2)
    return int(pid), int(scene), int(cam), int(frame)


def load_randperson(root: str | os.PathLike) -> Dataset:
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    image_dir = randperson_image_dir(root)
    parsed = []
    for name in (p.name for p in list_images(image_dir, recursive=False, empty_ok=True)):
        fields = parse_randperson_name(name)
        if fields is None:
            raise DataError(f"{image_dir / name}: malformed RandPerson file name, expected "
                            "<pid>_s<scene>_c<camera>_f<frame>.jpg as in 000000_s00_c00_f000000.jpg")
        parsed.append((name, fields))
    if not parsed:
        raise DataError(f"{image_dir}: no RandPerson images found")
    cameras = {pair: i for i, pair in enumerate(sorted({(s, c) for _, (_, s, c, _) in parsed}))}
    train = [ImageRecord(str(image_dir / name), pid, cameras[(scene, cam)], "randperson",
                         frame / RANDPERSON_FPS)
             for name, (pid, scene, cam, frame) in parsed]
    return Dataset(name="randperson", root=root, train=train)
