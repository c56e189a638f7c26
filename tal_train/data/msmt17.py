"""Loader for MSMT17 (V1 ``train/`` + ``test/``, V2 ``mask_train_v2/`` + ``mask_test_v2/``).

The splits come from the list files in the dataset root, one ``<relative path> <pid>`` per line:
``list_train.txt`` + ``list_val.txt`` form the training split (val identities are training
identities, as in torchreid/QAConv), ``list_query.txt`` and ``list_gallery.txt`` the test split.
Pids are taken from the lists as given (0-based; pid 0 is a real identity here, not a
distractor). The camera is the third field of the file name
(``0000_000_01_0303morning_0015_0.jpg`` -> camera 01 -> camid 0). MSMT17 names carry a date and
time of day but no documented frame clock, so timestamps are None.
"""
from __future__ import annotations

import os
from pathlib import Path

from tal_infer.errors import DataError
from tal_infer.user_files import UserFileError, read_regular

from .records import Dataset, ImageRecord

VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
# A list line is about 45 bytes: 64 MiB is over a million lines, ten times MSMT17's largest
# list (82,161 gallery images).
MAX_LIST_BYTES = 64 << 20
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",),
         "gallery": ("list_gallery.txt",)}


def msmt17_version(root: Path) -> str | None:
    """"V1" or "V2" from the image folders present, None when neither is."""
    for version, (train_dir, test_dir) in VERSIONS.items():
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            return version
    return None


def read_list(list_path: Path, image_dir: Path) -> list[ImageRecord]:
    """The records of one list file (a regular UTF-8 file of at most `MAX_LIST_BYTES`)."""
    try:
        text = read_regular(list_path, MAX_LIST_BYTES).decode("utf-8")
    except UserFileError as err:
        if err.problem == "file not found":
            raise DataError(f"{list_path}: missing MSMT17 list file '{list_path.name}'") from None
        raise DataError(str(err)) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{list_path}: not a UTF-8 text file (byte {err.start})") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            rel, pid = fields[0], int(fields[1])
            camid = int(os.path.basename(rel).split("_")[2]) - 1
        except (IndexError, ValueError):
            raise DataError(f"{list_path}:{lineno}: malformed line {line.strip()!r}, expected "
                            "'<pid>/<pid>_<idx>_<camera>_<date>_<frame>_<n>.jpg <pid>'") from None
        if camid < 0:
            raise DataError(f"{list_path}:{lineno}: camera number must start at 01 in {rel!r}")
        records.append(ImageRecord(str(image_dir / rel), pid, camid, "msmt17"))
    return records


def load_msmt17(root: str | os.PathLike) -> Dataset:
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    version = msmt17_version(root)
    if version is None:
        raise DataError(f"{root}: not an MSMT17 folder (expected train/ and test/ for V1, or "
                        "mask_train_v2/ and mask_test_v2/ for V2)")
    train_dir, test_dir = (root / d for d in VERSIONS[version])
    splits = {}
    for split, names in LISTS.items():
        image_dir = train_dir if split == "train" else test_dir
        splits[split] = [r for n in names for r in read_list(root / n, image_dir)]
    return Dataset(name="msmt17", root=root, **splits)
