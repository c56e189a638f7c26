"""Tiny dataset folders in each real layout (file names as the datasets ship them)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

# Market-1501: train has a distractor (dropped outside the gallery); the gallery has a
# distractor (kept) and a junk image (dropped); Thumbs.db ships with the real archive.
MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                           "0007_c3s2_012345_02.jpg", "0000_c1s1_000002_01.jpg", "Thumbs.db"],
    "bounding_box_test": ["0000_c1s1_000001_01.jpg", "-1_c2s1_000100_01.jpg",
                          "0003_c4s1_000200_01.jpg", "0003_c5s3_000250_02.jpg",
                          "0004_c6s1_000999_01.jpg"],
    "query": ["0003_c1s1_000100_00.jpg", "0004_c2s1_002500_00.jpg"],
}
CUHK03 = {
    "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0005_c1_2.png"],
    "bounding_box_test": ["0010_c2_7.png", "0011_c2_8.png", "0011_c1_3.png"],
    "query": ["0010_c1_1.png", "0011_c1_1.png"],
}
CUSTOM = {
    "bounding_box_train": ["0101_c1s1_000010_01.jpg", "0102_c3s1_000020_01.png"],
    "bounding_box_test": ["0201_c2s1_000030_01.jpg", "0202_c1s1_000040_01.jpg"],
    "query": ["0201_c1s1_000050_01.jpg"],
}
MSMT_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                       "0000/0000_001_05_0303noon_0020_1.jpg 0",
                       "0001/0001_000_15_0303afternoon_0100_0.jpg 1"],
    "list_val.txt": ["0002/0002_000_02_0303morning_0300_0.jpg 2"],
    "list_query.txt": ["0000/0000_000_03_0113morning_0008_0.jpg 0"],
    "list_gallery.txt": ["0000/0000_001_04_0113noon_0010_0.jpg 0",
                         "0001/0001_000_03_0113noon_0011_1.jpg 1"],
}
RANDPERSON = ["000000_s00_c00_f000264.jpg", "000000_s00_c01_f001032.jpg",
              "000001_s01_c00_f000024.jpg", "000002_c01_s01_f000048.jpg"]


def _image_bytes(ext: str) -> bytes:
    img = np.zeros((16, 8, 3), np.uint8)
    img[:, :, 0] = 200  # blue in BGR
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def write_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        ext = Path(name).suffix.lower()
        data = _image_bytes(ext) if ext in (".jpg", ".png") else b"not an image"
        (folder / name).write_bytes(data)


def write_layout(root: Path, layout: dict[str, list[str]]) -> Path:
    for sub, names in layout.items():
        write_files(root / sub, names)
    return root


def write_msmt17(root: Path, version: str) -> Path:
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2",
                                                                     "mask_test_v2")
    root.mkdir(parents=True)
    for list_name, lines in MSMT_LISTS.items():
        (root / list_name).write_text("\n".join(lines) + "\n")
        image_dir = root / (train_dir if list_name in ("list_train.txt", "list_val.txt")
                            else test_dir)
        for line in lines:
            rel = Path(line.split()[0])
            write_files(image_dir / rel.parent, [rel.name])
    return root


def write_randperson(root: Path) -> Path:
    write_files(root / "randperson_subset", RANDPERSON)  # nested, as the archive extracts
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A --data-root holding every supported layout under its usual folder name."""
    root = tmp_path / "datasets"
    write_layout(root / "Market-1501-v15.09.15", MARKET)
    write_msmt17(root / "MSMT17_V2", "V2")
    write_layout(root / "cuhk03-np" / "detected", CUHK03)
    write_randperson(root / "randperson_subset")
    write_layout(root / "my_cameras", CUSTOM)
    return root


@pytest.fixture
def layouts() -> SimpleNamespace:
    """The folder builders, for tests that need a layout variant of their own."""
    return SimpleNamespace(write_layout=write_layout, write_msmt17=write_msmt17,
                           write_randperson=write_randperson, write_files=write_files,
                           MARKET=MARKET, CUHK03=CUHK03, CUSTOM=CUSTOM)
