"""Writing the generators' output: JPEG files, the run manifest, and clearing old output."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tal_infer.errors import TalError


def write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise TalError(f"{path}: cannot write image")


def prepare_folder(folder: Path, subfolders: list[str], overwrite: bool) -> None:
    """Create `folder`; refuse a non-empty one unless `overwrite`, which removes only the JPEG
    and .txt files this generator writes in `subfolders` (nothing else is deleted)."""
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise TalError(f"{folder}: folder exists and is not empty (use --overwrite to "
                           "replace it)")
        for sub in subfolders:
            for p in (folder / sub).glob("*") if (folder / sub).is_dir() else ():
                if p.suffix in (".jpg", ".txt") and p.is_file():
                    p.unlink()
    for sub in subfolders:
        (folder / sub).mkdir(parents=True, exist_ok=True)


def write_manifest(path: Path, generator: str, config: Any, styles: list[Any],
                   structures: list[Any] | None = None) -> None:
    """What was generated and with which knobs, so a folder can be regenerated exactly."""
    manifest = {"generator": generator, "format_version": 1,
                "config": dataclasses.asdict(config),
                "domains": [dataclasses.asdict(s) for s in styles]}
    if structures is not None:
        manifest["structures"] = [dataclasses.asdict(s) for s in structures]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
