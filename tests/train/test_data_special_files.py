"""Special and oversized files on the training side: training images, MSMT17 list files and
checkpoints are opened as regular files only, with a size cap each (tal_infer.user_files);
each case is built for real and run under a deadline, so a regression hangs no test run.
(Memory: a refused file is never read; tests/infer/test_user_files.py measures it.)"""
from __future__ import annotations

import contextlib

import pytest
import torch

from tal_infer.errors import DataError, TalError
from tal_train.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, load_checkpoint
from tal_train.data.msmt17 import MAX_LIST_BYTES
from tal_train.data.protocols import TrainRecord
from tal_train.data.records import ImageRecord
from tal_train.data.registry import build_dataset
from tal_train.data.transforms import EvalImages, TrainImages
from tal_train.models.pretrained import load_pretrained

from special_files import SPECIAL_KINDS, deadline, special_file

MEAN, STD, SIZE = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (32, 16)


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_files_among_training_images(tmp_path, kind):
    with special_file(kind, tmp_path / "0001_c1s1_000001_01.jpg") as path, deadline(5):
        for dataset in (TrainImages([TrainRecord(str(path), 1, 0, 0)], SIZE, MEAN, STD),
                        EvalImages([ImageRecord(str(path), 1, 0, "d")], SIZE, MEAN, STD)):
            with pytest.raises(DataError) as info:
                dataset[0]
            assert str(info.value) == (f"{path}: is {SPECIAL_KINDS[kind]}; only regular files "
                                       "are read")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "oversized", "not-utf8"])
def test_msmt17_list_files(tmp_path, layouts, kind):
    root = layouts.write_msmt17(tmp_path / "MSMT17_V1", "V1")
    path = root / "list_query.txt"
    path.unlink()
    problems = {"fifo": "is a named pipe (FIFO); only regular files are read",
                "dev-zero": "is a device; only regular files are read",
                "oversized": f"is {MAX_LIST_BYTES + 1:,} bytes, over the {MAX_LIST_BYTES:,}-byte "
                             "limit for this kind of file",
                "not-utf8": "not a UTF-8 text file (byte 5)"}
    if kind == "oversized":
        _sparse(path, MAX_LIST_BYTES + 1)
    elif kind == "not-utf8":
        path.write_bytes(b"0000/\xff_000_01_0303morning_0015_0.jpg 0\n")
    with special_file(kind, path) if kind in SPECIAL_KINDS else contextlib.nullcontext(), deadline(5):
        with pytest.raises(DataError) as info:
            build_dataset("msmt17", root)
    assert str(info.value) == f"{path}: {problems[kind]}"


LOADERS = {  # torch.load's inputs: what the loader raises and how it names a missing file
    "checkpoint": (load_checkpoint, CheckpointError, "checkpoint not found"),
    "pretrained": (lambda path: load_pretrained(torch.nn.Linear(2, 2), str(path)), TalError,
                   "pretrained weights file not found"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "oversized", "missing"])
def test_weight_files_that_are_not_regular_files(tmp_path, kind, loader):
    load, error, missing = LOADERS[loader]
    path = tmp_path / "weights.pth"
    problems = {"fifo": "is a named pipe (FIFO); only regular files are read",
                "dev-zero": "is a device; only regular files are read",
                "folder": "is a folder; only regular files are read",
                "oversized": f"is {MAX_CHECKPOINT_BYTES + 1:,} bytes, over the "
                             f"{MAX_CHECKPOINT_BYTES:,}-byte limit for this kind of file",
                "missing": missing}
    if kind == "oversized":
        _sparse(path, MAX_CHECKPOINT_BYTES + 1)
    with special_file(kind, path) if kind in SPECIAL_KINDS else contextlib.nullcontext(), deadline(5):
        with pytest.raises(error) as info:
            load(path)
    assert str(info.value) == f"{path}: {problems[kind]}"
