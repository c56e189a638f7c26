"""Loaders for the Market-1501 folder layout: Market-1501, CUHK03-NP and users' own data.

Layout: ``bounding_box_train/`` (train), ``query/``, ``bounding_box_test/`` (gallery), file
names ``<pid>_c<cam>[s<seq>]_<frame>...`` read by `tal_infer.naming.parse_market_name`.
Market-1501 rules: pid -1 is junk and is dropped everywhere; pid 0000 is a distractor and is kept
in the gallery only (it is no identity to train on or to query). A timestamp is derived only when
the name carries a sequence and a frame (``c1s1_000451``): frame / 25 fps, i.e. seconds from the
start of that camera's sequence (CUHK03-NP's ``0001_c1_01`` carries an image index, not a time).
"""
from __future__ import annotations

import os
from pathlib import Path

from tal_infer.errors import DataError
from tal_infer.images import list_images
from tal_infer.naming import parse_market_name

from .records import Dataset, ImageRecord

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_FPS = 25.0


def is_market_layout(folder: Path) -> bool:
    return all((folder / sub).is_dir() for sub in MARKET_FOLDERS.values())


def read_market_split(folder: Path, split: str, domain: str) -> list[ImageRecord]:
    """Records of one Market-layout folder (its image files, `tal_infer.images.list_images`:
    other files such as Thumbs.db are ignored) with the junk/distractor rules applied."""
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder '{folder.name}/' (the Market-1501 layout needs "
                        f"{', '.join(f + '/' for f in MARKET_FOLDERS.values())})")
    records = []
    for name in (p.name for p in list_images(folder, recursive=False, empty_ok=True)):
        parsed = parse_market_name(name)
        if parsed is None or parsed.pid < -1:
            raise DataError(f"{folder / name}: malformed file name, expected "
                            "<pid>_c<camera>[s<seq>]_<frame>... as in 0002_c1s1_000451_03.jpg")
        if parsed.pid == -1 or (parsed.pid == 0 and split != "gallery"):
            continue
        timestamp = None
        if parsed.sequence is not None and parsed.frame is not None:
            timestamp = parsed.frame / MARKET_FPS
        records.append(ImageRecord(str(folder / name), parsed.pid, parsed.camid, domain, timestamp))
    return records


def load_market_layout(root: str | os.PathLike, name: str) -> Dataset:
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    splits = {split: read_market_split(root / sub, split, name)
              for split, sub in MARKET_FOLDERS.items()}
    return Dataset(name=name, root=root, **splits)


def load_market1501(root: str | os.PathLike) -> Dataset:
    return load_market_layout(root, "market1501")


def load_cuhk03(root: str | os.PathLike) -> Dataset:
    """CUHK03-NP: `root` is its ``detected/`` (the paper's choice) or ``labeled/`` folder."""
    root = Path(root)
    if not is_market_layout(root):
        for sub in ("detected", "labeled"):
            if is_market_layout(root / sub):
                raise DataError(f"{root}: give the CUHK03-NP subset folder, e.g. {root / sub}")
    return load_market_layout(root, "cuhk03")


def load_custom(root: str | os.PathLike) -> Dataset:
    """Any folder in the Market layout; the dataset (and domain) is named after the folder."""
    return load_market_layout(root, Path(root).resolve().name)
