"""Fixtures of the scale-out tests: one local Ray for the whole session (2 CPUs, no
dashboard; every test using it runs on one pytest-xdist worker, see tests/conftest.py), a
fake bundle with a global descriptor, and Market-named crop files."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))  # runtime_fixtures

from runtime_fixtures import write_crops, write_fake_bundle  # noqa: E402
from cluster_fixtures import gallery_names  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray (started here, shut down at the end)."""
    from tal_infer.cluster.ray_support import connect

    os.environ.pop("RAY_ADDRESS", None)  # the suite kills shard processes: never a real cluster
    ray = connect(num_cpus=2)  # the test extra installs Ray: no skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A contract bundle with a global descriptor (two-stage retrieval works on it)."""
    return write_fake_bundle(tmp_path_factory.mktemp("bundles") / "fake-desc", descriptor=True)


@pytest.fixture(scope="session")
def crops(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """(gallery files, query files): 160 gallery crops of 40 people on 4 cameras, three of
    them byte-for-byte copies of another crop (exact ties), and 5 queries."""
    root = tmp_path_factory.mktemp("crops")
    gallery = write_crops(root / "gallery", gallery_names(40), seed=2)
    for i, source in enumerate(gallery[:3]):
        copy = root / "gallery" / f"{9000 + i:04d}_c4s9_000000_00.jpg"
        copy.write_bytes(source.read_bytes())
        gallery.append(copy)
    queries = write_crops(root / "query", [f"{p:04d}_c1s1_000000_00.jpg" for p in
                                          (1, 2, 7, 19, 33)], seed=3)
    return gallery, queries
