"""A damaged gallery index is detected on every open and append, never padded or used silently,
and `rebuild=True` starts it over, but only in a folder holding nothing but index files."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer.cli import main as tal_infer

from tal_infer.index import (GalleryIndex, GalleryIndexError, IndexDamagedError,
                             IndexMismatchError)
from tal_infer.index.contents import _non_finite_rows
from tal_infer.index.store import FeatureStore

from test_index import (SHAPES, CountingExtractor, assert_same_contents, build, contents,
                        extract_features, make_gallery, market_file)

ROW_BYTES = {key: int(np.prod(shape)) * 2 for key, shape in SHAPES.items()}


@pytest.fixture()
def built(tmp_path) -> tuple[Path, list[Path]]:
    """An index of 7 files (committed rows 0..6) and the gallery files."""
    files = make_gallery(tmp_path / "g", 7)
    build(tmp_path / "idx", files)
    return tmp_path / "idx", files


def feature_file(index: Path, key: str = "di_res4") -> Path:
    (path,) = index.glob(f"features-*/{key}.f16")
    return path


def shorten(path: Path, rows: int) -> bytes:
    """Cut a feature file to ``rows`` rows (as a copy gone wrong would); returns its bytes."""
    data = path.read_bytes()[:rows * ROW_BYTES[path.stem]]
    path.write_bytes(data)
    return data


def sql(index: Path, statement: str) -> None:
    with sqlite3.connect(index / "index.sqlite") as con:
        con.execute(statement)


def snapshot_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


SHORT = (r"index is damaged: the catalog commits 7 feature rows, features-0/di_res4.f16 holds "
         r"4 of them; rebuild it$")


def test_short_feature_file_is_refused_by_open_load_sync_and_compact(built):
    index, files = built
    opened = GalleryIndex(index, "model-a", SHAPES)
    kept = shorten(feature_file(index), 4)
    before = snapshot_bytes(index)
    with pytest.raises(IndexDamagedError, match=SHORT):
        GalleryIndex(index, "model-a", SHAPES)
    with pytest.raises(IndexDamagedError, match=SHORT):
        opened.load()
    extractor = CountingExtractor()
    with pytest.raises(IndexDamagedError, match=SHORT):
        opened.sync(files + [market_file(files[0].parent, 30)], extractor)
    with pytest.raises(IndexDamagedError, match=SHORT):
        opened.compact()
    assert extractor.seen == []  # refused before any work
    assert snapshot_bytes(index) == before  # nothing zeroed, appended or rewritten
    assert feature_file(index).read_bytes() == kept


def test_append_refuses_a_short_file_instead_of_padding_it(tmp_path):
    store = FeatureStore(tmp_path, SHAPES)
    rows = {k: np.ones((3, *s), np.float16) for k, s in SHAPES.items()}
    store.append(0, 0, rows)
    store.append(0, 3, rows)  # 6 rows committed
    kept = shorten(store.file(0, "ds_res4"), 5)
    with pytest.raises(IndexDamagedError, match="commits 6 feature rows, features-0/ds_res4.f16 "
                                                "holds 5 of them"):
        store.append(0, 6, rows)
    assert store.file(0, "ds_res4").read_bytes() == kept
    assert store.file(0, "di_res4").stat().st_size == 6 * ROW_BYTES["di_res4"]


def test_bytes_past_the_committed_rows_are_an_interrupted_write_not_damage(built, tmp_path):
    index, files = built
    path = feature_file(index)
    path.write_bytes(path.read_bytes() + b"\x01" * (ROW_BYTES["di_res4"] + 5))
    assert len(GalleryIndex(index, "model-a", SHAPES).load()) == 7
    more = files + [market_file(files[0].parent, 30)]
    GalleryIndex(index, "model-a", SHAPES).sync(more, extract_features)
    build(tmp_path / "clean", more)
    assert_same_contents(index, tmp_path / "clean")


@pytest.mark.parametrize("damage, words", [
    (lambda ix: shutil.rmtree(next(ix.glob("features-*"))),
     "features-0/ds_res4.f16 is missing"),
    (lambda ix: (ix / "index.sqlite").write_bytes(b"not a database at all " * 50),
     "cannot use the index catalog index.sqlite (file is not a database)"),
    (lambda ix: sql(ix, "UPDATE items SET row = 9 WHERE row = 2"),
     "items name feature rows 0..9 of 7 committed"),
    (lambda ix: sql(ix, "UPDATE items SET row = 7 WHERE row = 2"),  # one past the last row
     "items name feature rows 0..7 of 7 committed"),
    (lambda ix: sql(ix, "UPDATE items SET row = -1 WHERE row = 2"),
     "items name feature rows -1..6 of 7 committed"),
    (lambda ix: sql(ix, "UPDATE items SET row = 1 WHERE row = 2"),
     "1 items share a feature row"),
    (lambda ix: sql(ix, "UPDATE info SET value = 'seven' WHERE key = 'rows'"),
     "unreadable info table"),
    (lambda ix: sql(ix, "DROP TABLE items"), "catalog tables missing (items)"),
])
def test_every_kind_of_damage_is_named_and_rebuild_starts_over(built, tmp_path, damage, words):
    index, files = built
    damage(index)
    with pytest.raises(IndexDamagedError) as info:
        GalleryIndex(index, "model-a", SHAPES).load()
    assert words in str(info.value) and "\n" not in str(info.value)
    rebuilt = GalleryIndex(index, "model-a", SHAPES, rebuild=True)
    assert len(rebuilt.load()) == 0
    extractor = CountingExtractor()
    assert rebuilt.sync(files, extractor).added == 7 and len(extractor.seen) == 7
    build(tmp_path / "clean", files)
    assert_same_contents(index, tmp_path / "clean")


def test_rebuild_of_a_healthy_index_of_this_model_keeps_it(built):
    index, _ = built
    records, _ = contents(index)
    assert GalleryIndex(index, "model-a", SHAPES, rebuild=True).load().records == records


def test_rebuild_never_touches_a_folder_that_holds_other_files(built, tmp_path):
    index, _ = built
    (index / "index.sqlite").write_bytes(b"garbage " * 100)
    (index / "my_notes.txt").write_text("keep me")
    before = snapshot_bytes(index)
    with pytest.raises(GalleryIndexError, match="holds files that are not part of a gallery "
                                                "index; not rebuilding it .it holds my_notes"):
        GalleryIndex(index, "model-a", SHAPES, rebuild=True)
    assert snapshot_bytes(index) == before

    photos = tmp_path / "photos"  # not an index at all
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"jpeg bytes")
    with pytest.raises(GalleryIndexError, match="not a gallery index"):
        GalleryIndex(photos, "model-a", SHAPES, rebuild=True)
    assert [p.name for p in photos.iterdir()] == ["holiday.jpg"]


def test_a_generation_folder_with_other_files_is_not_the_index_s(built):
    index, _ = built
    other = index / "features-7"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg bytes")
    sql(index, "UPDATE info SET value = 'model-x' WHERE key = 'fingerprint'")
    with pytest.raises(IndexMismatchError):
        GalleryIndex(index, "model-a", SHAPES)
    with pytest.raises(GalleryIndexError, match="it holds features-7"):
        GalleryIndex(index, "model-a", SHAPES, rebuild=True)
    assert (other / "holiday.jpg").is_file()


def test_an_sqlite_file_of_another_program_is_not_initialized(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir()
    with sqlite3.connect(folder / "index.sqlite") as con:
        con.execute("CREATE TABLE bookmarks (url TEXT)")
    before = snapshot_bytes(folder)
    for rebuild in (False, True):
        with pytest.raises(GalleryIndexError, match="not a gallery index catalog"):
            GalleryIndex(folder, "model-a", SHAPES, rebuild=rebuild)
    assert snapshot_bytes(folder) == before


def poison(index: Path, row: int, key: str = "di_res4", value=np.nan) -> None:
    """Overwrite one value of a stored row (a flipped bit, a bad disk block)."""
    path = feature_file(index, key)
    data = bytearray(path.read_bytes())
    at = row * ROW_BYTES[key] + 6
    data[at:at + 2] = np.array([value], "<f2").tobytes()
    path.write_bytes(bytes(data))


def test_non_finite_stored_features_name_the_damaged_entries(built):
    index, files = built
    contents_ = GalleryIndex(index, "model-a", SHAPES).load()
    by_row = {int(r): rec.path for r, rec in zip(contents_.rows, contents_.records)}
    poison(index, 2)
    poison(index, 5, "ds_res4", np.inf)
    loaded = GalleryIndex(index, "model-a", SHAPES).load()  # not read yet: opening stays cheap
    want = (rf"index is damaged: features-0/di_res4.f16 holds NaN or infinite values for 1 "
            rf"entries \({re.escape(by_row[2])}\)")
    with pytest.raises(IndexDamagedError, match=want):
        list(loaded.iter_chunks(3))
    column = [rec.path for rec in loaded.records].index(by_row[5])
    with pytest.raises(IndexDamagedError, match=rf"ds_res4.f16 holds NaN or infinite values for "
                                                rf"1 entries \({re.escape(by_row[5])}\)"):
        loaded.take([0, column])
    fine = [i for i, rec in enumerate(loaded.records) if rec.path not in (by_row[2], by_row[5])]
    assert len(loaded.take(fine)["di_res4"]) == 5  # the other entries stay usable


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_the_bit_level_check_finds_exactly_the_non_finite_rows(dtype):
    values = np.random.default_rng(4).standard_normal((50, 7, 3)).astype(dtype)
    values[3, 1, 2], values[10, 0, 0], values[11, 6, 2] = np.nan, np.inf, -np.inf
    values[20, 0, 0], values[21, 0, 0] = np.finfo(dtype).max, -np.finfo(dtype).max  # finite
    values[22, 0, 0] = np.finfo(dtype).smallest_subnormal
    assert np.flatnonzero(_non_finite_rows(values)).tolist() == [3, 10, 11]
    assert np.flatnonzero(_non_finite_rows(values[::-1])).tolist() == [38, 39, 46]  # a view


def test_tal_infer_on_an_index_with_nan_features_is_one_line(fake_bundle, crop_folders,
                                                            tmp_path):
    queries, gallery = crop_folders
    args = [str(a) for a in ("--gallery", gallery, "--queries", queries, "--model", fake_bundle,
                             "--quiet", "--device", "cpu", "--index", tmp_path / "idx")]
    assert CliRunner().invoke(tal_infer, args).exit_code == 0
    records = GalleryIndex.open(tmp_path / "idx").load()
    victim = records.records[3].path
    path = sorted((tmp_path / "idx").glob("features-*/*.f32"))[0]
    row_bytes = path.stat().st_size // len(records)
    data = bytearray(path.read_bytes())
    at = int(records.rows[3]) * row_bytes
    data[at:at + 4] = np.array([np.nan], "<f4").tobytes()
    path.write_bytes(bytes(data))
    res = CliRunner().invoke(tal_infer, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"holds NaN or infinite values for 1 entries ({victim})" in \
        errors[0], res.stderr


def _within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread: its result or exception, or AssertionError if it blocks."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_special_files_in_an_index_are_refused_without_blocking(built, tmp_path):
    index, files = built
    opened = GalleryIndex(index, "model-a", SHAPES)
    data = feature_file(index)
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(IndexDamagedError, match=r"features-0/di_res4.f16 is a named pipe \(FIFO\)"
                                                r"; only regular files are read"):
        _within(30, opened.load)
    data.unlink()
    data.symlink_to("/dev/zero")
    with pytest.raises(IndexDamagedError, match=r"features-0/di_res4.f16 is a device"):
        _within(30, opened.load)

    build(tmp_path / "fifo-catalog", files)
    catalog_file = tmp_path / "fifo-catalog" / "index.sqlite"
    catalog_file.unlink()
    os.mkfifo(catalog_file)
    with pytest.raises(IndexDamagedError, match=r"index.sqlite is a named pipe \(FIFO\)"):
        _within(30, GalleryIndex, tmp_path / "fifo-catalog", "model-a", SHAPES)
    rebuilt = _within(30, lambda: GalleryIndex(tmp_path / "fifo-catalog", "model-a", SHAPES,
                                               rebuild=True))
    assert len(rebuilt.load()) == 0 and catalog_file.is_file()

    lock = index / "lock"
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(GalleryIndexError, match=r"idx/lock: is a named pipe \(FIFO\)"):
        _within(30, opened.compact)
