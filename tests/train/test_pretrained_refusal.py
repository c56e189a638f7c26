"""A pretrained-weights file that torch.load(weights_only=True) refuses is one line in the
checkpoint's wording, never torch's advice to retry with weights_only=False, and its code never
runs (issue 13: the same rule as tal_train.checkpoint)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from tal_infer.errors import TalError
from tal_train.models import TALConfig, build_model, load_pretrained


class _Plant:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def model():
    return build_model(TALConfig.preset("tiny", domains=("a", "b"), image_size=(64, 32)))


def _refusal(model, path: Path) -> str:
    with pytest.raises(TalError) as err:
        load_pretrained(model, path)
    return str(err.value)


def test_weights_with_code_are_refused_in_one_line_without_the_advice(model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "imagenet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "extra": _Plant(marker)}, path)
    message = _refusal(model, path)
    assert message == (f"{path}: holds the Python object posix.mkdir, not only tensors and "
                       "plain containers; refused, because loading it could run code")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(pickle.dumps([1, 2, 3], protocol=2)[:-1] + b"\x99 damaged")
    other = _refusal(model, damaged)
    assert other.startswith(f"{damaged}: not a readable weights file (")
    for text in (message, other):
        assert "weights_only" not in text and "Weights only" not in text and "\n" not in text
    assert not marker.exists()
