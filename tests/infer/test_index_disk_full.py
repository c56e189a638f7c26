"""A full disk while an index is written: one line saying "no space left on <index>", nothing
committed is lost, the space a failed write took is given back, and the same command completes
once there is space again.

Two faults stand for a full file system: feature files whose writes fail with ENOSPC after a
byte budget (the store's ``open`` wrapped), and a catalog that cannot grow (SQLite's
``max_page_count`` at its current size, which fails exactly as a full disk does:
SQLITE_FULL).
"""
from __future__ import annotations

import builtins
import errno
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tal_infer.cli import main as tal_infer
from tal_infer.index import GalleryIndex, GalleryIndexError, catalog, store
from tal_infer.index_cli import main as tal_index

from runtime_fixtures import GALLERY_NAMES, QUERY_NAMES, write_crops
from test_index import (SHAPES, assert_consistent, assert_same_contents, build, contents,
                        extract_features, make_gallery, market_file)
from test_index_integrity import snapshot_bytes


def feature_files(index: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot_bytes(index).items() if k.startswith("features-")}


def no_space(index: Path, what: str) -> str:
    return (rf"^no space left on {re.escape(str(index))} \(writing {what}\); the index keeps "
            r"what was committed before: free some space and run the command again$")


class _FillingFile:
    """A file on a disk with ``budget[0]`` bytes left: writes past it fail with ENOSPC after
    writing what fits (as write(2) does)."""

    def __init__(self, f, budget: list[float]):
        self._f, self._budget = f, budget

    def write(self, data: bytes) -> int:
        room = max(0, min(len(data), self._budget[0]))
        self._budget[0] -= room
        self._f.write(data[:room])
        if room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return room

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


class _FeatureDisk:
    """The disk under the store's feature files: `fill` leaves it ``budget`` bytes, `free`
    gives it room again."""

    def __init__(self, monkeypatch):
        self._left = [float("inf")]
        monkeypatch.setattr(store, "open", lambda *a, **kw: _FillingFile(
            builtins.open(*a, **kw), self._left), raising=False)

    def fill(self, budget: int) -> None:
        self._left[0] = budget

    def free(self) -> None:
        self._left[0] = float("inf")


@pytest.fixture()
def feature_disk(monkeypatch) -> _FeatureDisk:
    return _FeatureDisk(monkeypatch)


@pytest.fixture()
def full_catalog(monkeypatch):
    """The catalog cannot grow past its size when a connection opens (SQLITE_FULL)."""
    real = catalog.connect

    def connect(path):
        con = real(path)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        return con

    monkeypatch.setattr(catalog, "connect", connect)
    yield
    monkeypatch.undo()


@pytest.fixture()
def built(tmp_path) -> tuple[Path, list[Path]]:
    files = make_gallery(tmp_path / "g", 7)
    build(tmp_path / "idx", files)
    return tmp_path / "idx", files


@pytest.mark.parametrize("budget", [0, 100, 1000])  # nothing, part of a row, a few rows fit
def test_full_disk_while_appending_features(built, tmp_path, feature_disk, budget):
    index, files = built
    records, before = contents(index)[0], feature_files(index)
    more = files + [market_file(files[0].parent, i) for i in range(30, 40)]
    feature_disk.fill(budget)
    with pytest.raises(GalleryIndexError, match=no_space(index, "feature files")):
        GalleryIndex(index, "model-a", SHAPES).sync(more, extract_features, batch_size=20)
    assert contents(index)[0] == records
    assert feature_files(index) == before  # the partial rows were cut off again
    feature_disk.free()
    GalleryIndex(index, "model-a", SHAPES).sync(more, extract_features)
    build(tmp_path / "clean", more)
    assert_same_contents(index, tmp_path / "clean")


def test_full_disk_in_the_catalog_while_syncing(built, tmp_path, full_catalog):
    index, files = built
    records, _ = contents(index)
    more = files + make_gallery(tmp_path / "g2", 60)  # long paths: the catalog must grow
    with pytest.raises(GalleryIndexError, match=no_space(index, "the catalog")):
        GalleryIndex(index, "model-a", SHAPES).sync(more, extract_features, batch_size=5)
    kept = {r.path for r in GalleryIndex.open(index).load().records}
    assert {r.path for r in records} <= kept < {str(p) for p in more}  # earlier batches kept
    assert_consistent(index)


def test_full_disk_during_removal_changes_nothing(built, tmp_path, feature_disk):
    index, files = built
    before = snapshot_bytes(index)
    feature_disk.fill(300)
    res = CliRunner().invoke(tal_index, ["remove", str(index), "--path", str(files[2])])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(no_space(index, "feature files"),
                                         errors[0][len("error: "):]), errors
    assert snapshot_bytes(index) == before  # no half-written generation left behind
    feature_disk.free()
    res = CliRunner().invoke(tal_index, ["remove", str(index), "--path", str(files[2])])
    assert res.exit_code == 0 and "removed 1 entries (6 left)" in res.output
    build(tmp_path / "clean", [f for f in files if f != files[2]])
    assert_same_contents(index, tmp_path / "clean")


def test_tal_infer_index_on_a_full_disk_is_one_line(fake_bundle, tmp_path, full_catalog):
    queries = write_crops(tmp_path / "q", QUERY_NAMES[:1], seed=1)[0].parent
    gallery = write_crops(tmp_path / "g", GALLERY_NAMES, seed=2)[0].parent
    res = CliRunner().invoke(tal_infer, [str(a) for a in (
        "--gallery", gallery, "--queries", queries, "--model", fake_bundle, "--quiet",
        "--device", "cpu", "--index", tmp_path / "idx")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(no_space(tmp_path / "idx", "the catalog"),
                                         errors[0][len("error: "):]), errors
