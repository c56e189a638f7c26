"""Suite-wide settings: tests marked `gpu` skip where torch sees no CUDA device, and the header
names the device and the Triton caches (a GPU run's log then says what it ran on); under
pytest-xdist each worker computes on one thread, and the tests that share a costly fixture run
on one worker.

**Threads:** the suite runs in one pytest-xdist worker per core (`-n auto` in pyproject.toml).
Torch's and OpenMP's default of one thread per core in every worker would run 2 x cores
threads that wait on each other, so a worker gets OMP_NUM_THREADS=1 unless the caller set it
(benchmarks/gpu_check.sh sets 2); the variable also reaches the subprocesses tests start.
Measured on this project's 2-core machine under load: tests/train/test_models_backbone.py took
76 s CPU with 2 threads and 11 s with 1 (OpenMP threads spin while they wait for a core).

**Seeds:** every random generator in the tests is seeded. Generators a test makes itself take
a seed (test_seeded_randomness.py fails on one without); the global ones (numpy's legacy
generator, `random`, torch's default generator) are reseeded before every test from its id
(`_seeded_globals`), so a test draws the same numbers whatever ran before it on its worker.

**Shared fixtures:** a session or module fixture is built once per worker process. The tests
that use one of SHARED_FIXTURES (each costs seconds: an export, a subprocess running every
case) get an ``xdist_group`` mark, so `--dist loadgroup` sends them to one worker, which builds
the fixture once for all of them.
"""
from __future__ import annotations

import os
import random
import sys
import zlib

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # already imported by a plugin: the variable came too late
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# fixture name -> xdist group of the tests that use it (where the fixture is defined)
SHARED_FIXTURES = {
    "fp32_bundle": "tiny-bundles",  # tests/export/conftest.py
    "fp16_bundle": "tiny-bundles",  # tests/export/conftest.py
    "exported": "exported-bundle",  # tests/infer/conftest.py
    "interpreter_results": "triton-interpreter",  # tests/plugins/test_kernel_interpreter.py
    "distill_setup": "distillation",  # tests/train/test_distill.py
    "ray_cluster": "ray-cluster",  # tests/scale/conftest.py: one local Ray per test session
}


@pytest.fixture(autouse=True)
def _seeded_globals(request) -> None:
    """The global generators, seeded from the test's id (torch's only where it is imported:
    a test that imports it later starts from torch's fixed default seed)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        groups = {SHARED_FIXTURES[name] for name in getattr(item, "fixturenames", ())
                  if name in SHARED_FIXTURES}
        for group in sorted(groups):
            item.add_marker(pytest.mark.xdist_group(group))
    # The marker, not `item.keywords`: those also hold folder names (a checkout named gpu).
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and _cuda_device() is None:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
