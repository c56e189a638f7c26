"""Suite-wide GPU handling: tests marked `gpu` skip where torch sees no CUDA device, and the
header names the device and the Triton caches (a GPU run's log then says what it ran on)."""
from __future__ import annotations

import os

import pytest


def _cuda_device() -> str | None:
    """The CUDA device's name, or None where torch is missing or sees no usable device."""
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except (ImportError, RuntimeError, AssertionError):  # no torch, or a CUDA that fails to start
        return None


def pytest_report_header(config) -> list[str]:
    device = _cuda_device()
    if device is None:
        return ["CUDA: none (tests marked gpu skip)"]
    return [f"CUDA: {device}; TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR', '(default)')}"
            f", TAL_CACHE_DIR={os.environ.get('TAL_CACHE_DIR', '(default)')}"]


def pytest_collection_modifyitems(config, items) -> None:
    # The marker, not `item.keywords`: those also hold folder names (a checkout named gpu).
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and _cuda_device() is None:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
