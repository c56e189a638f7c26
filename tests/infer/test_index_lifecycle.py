"""Gallery lifecycle: erasure by path and by metadata, retention, their crash safety (SIGKILL at
every step), tal-index, and the in-memory Gallery's counterparts."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import Gallery
from tal_infer.errors import TalError
from tal_infer.index import GalleryIndex, GalleryIndexError
from tal_infer.index_cli import main as tal_index
from tal_infer.lifecycle import EntryFilter, parse_duration, parse_time

from test_index import (HERE, SHAPES, CountingExtractor, assert_consistent, assert_same_contents,
                        build, contents, extract_features, features_for_digest, make_gallery)

T0 = 1_700_000_000.0  # timestamps of the metadata function below: T0 + 100 * i


def metadata(path: str) -> dict:
    """Camera, label, timestamp (not for the last two files) and a track id from the name."""
    i = int(Path(path).name.split("_")[2])
    meta = {"camera": i % 3, "label": i // 2 + 1, "track": f"t{i % 4}"}
    if i < 10:
        meta["timestamp"] = T0 + 100 * i
    return meta


def indexed(folder: Path, files: list[Path]) -> GalleryIndex:
    index = GalleryIndex(folder, "model-a", SHAPES)
    index.sync(files, extract_features, metadata, batch_size=3)
    return index


def feature_bytes_of(path: Path) -> list[bytes]:
    """The fp16 rows a file's features were stored as."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return [v.astype("<f2").tobytes() for v in features_for_digest(digest).values()]


def index_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def assert_erased(folder: Path, removed: list[Path], rows: list[bytes] | None = None) -> None:
    """No file of the index folder holds a removed entry's path or features (``rows``, or
    those of the files' current content)."""
    everything = index_bytes(folder)
    for path in removed:
        assert str(path).encode() not in everything, path
    for row in rows if rows is not None else [r for p in removed for r in feature_bytes_of(p)]:
        assert row not in everything


def test_remove_by_path_rewrites_the_files_without_the_entries(tmp_path):
    files = make_gallery(tmp_path / "g", 12)
    index = indexed(tmp_path / "idx", files)
    before = index.feature_bytes()
    assert all(row in index_bytes(tmp_path / "idx") for row in feature_bytes_of(files[4]))
    assert str(files[4]).encode() in index_bytes(tmp_path / "idx")

    report = index.remove([files[4], files[7], tmp_path / "g" / "not-indexed.jpg"])
    assert sorted(report.removed) == sorted([str(files[4]), str(files[7])])
    assert report.kept == 10 and report.bytes_before == before
    row_bytes = sum(int(np.prod(s)) * 2 for s in SHAPES.values())
    assert report.bytes_after == index.feature_bytes() == before - 2 * row_bytes
    assert_erased(tmp_path / "idx", [files[4], files[7]])
    assert len(list((tmp_path / "idx").glob("features-*"))) == 1
    rest = [f for f in files if f not in (files[4], files[7])]
    clean = indexed(tmp_path / "clean", rest)
    assert_same_contents(tmp_path / "idx", tmp_path / "clean")
    assert index.remove([files[4]]).removed == [] and clean.feature_bytes() == \
        index.feature_bytes()


def test_remove_where_and_retention_select_by_metadata_and_time(tmp_path):
    files = make_gallery(tmp_path / "g", 12)
    index = indexed(tmp_path / "idx", files)
    name = lambda p: int(Path(p).name.split("_")[2])  # noqa: E731

    report = index.remove_where(EntryFilter({"camera": 1, "track": "t1"}))
    assert sorted(map(name, report.removed)) == [1]  # i % 3 == 1 and i % 4 == 1, i < 12
    report = index.remove_where(EntryFilter({"label": 3}))
    assert sorted(map(name, report.removed)) == [4, 5]
    # no timestamp for files 10, 11: their file time (now) is their entry time
    report = index.drop_older_than(T0 + 350)
    assert sorted(map(name, report.removed)) == [0, 2, 3]
    os.utime(files[10], (T0, T0))
    index.sync(index.load().paths, extract_features, metadata)  # learns the new file time
    report = index.remove_where(EntryFilter({"track": "t2"}, before=T0 + 10_000))
    assert sorted(map(name, report.removed)) == [6, 10]
    assert_consistent(tmp_path / "idx")
    assert_erased(tmp_path / "idx", [files[i] for i in (0, 1, 2, 3, 4, 5, 6)])


def test_filters_refuse_to_select_everything_and_parse_cli_values():
    with pytest.raises(TalError, match="at least one condition"):
        EntryFilter({})
    parsed = EntryFilter.parse(["camera=3", "name=ann", 'track="7"', "score=0.5"], "1000")
    assert parsed.fields == {"camera": 3, "name": "ann", "track": "7", "score": 0.5}
    assert parsed.before == 1000.0
    assert parsed.matches({"camera": 3, "name": "ann", "track": "7", "score": 0.5}, 999.0)
    assert not parsed.matches({"camera": 3, "name": "ann", "track": "7", "score": 0.5}, 1000.0)
    assert not parsed.matches({"camera": 3, "name": "ann", "track": 7, "score": 0.5}, 1.0)
    assert not parsed.matches({"camera": 3, "name": "ann", "track": "7"}, 1.0)
    assert parse_time("2023-11-14T22:13:20Z".replace("Z", "+00:00")) == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000.0  # UTC unless it says
    assert [parse_duration(t) for t in ("90", "90s", "15m", "2h", "1.5d", "2w")] == \
        [90, 90, 900, 7200, 129600, 1209600]
    for bad, what in (("x", "not a duration"), ("3y", "not a duration")):
        with pytest.raises(TalError, match=what):
            parse_duration(bad)
    with pytest.raises(TalError, match="not a time"):
        parse_time("yesterday")
    with pytest.raises(TalError, match="KEY=VALUE"):
        EntryFilter.parse(["camera"])


# -- crash safety: a removal killed at every step --------------------------------------------

CHILD = """
import sys
sys.path.insert(0, {here!r})
import crash_points
from test_index import SHAPES
from tal_infer.index import GalleryIndex

index_dir, kill_at, victims = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
crash_points.install(kill_at)
GalleryIndex(index_dir, "model-a", SHAPES).remove(victims)
"""


def remove_in_child(index_dir: Path, victims: list[Path], kill_at: int) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(here=str(HERE)), str(index_dir),
                           str(kill_at), *map(str, victims)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


def test_removal_killed_at_every_step_recovers_to_a_clean_erasure(tmp_path):
    files = make_gallery(tmp_path / "g", 10)
    base = tmp_path / "base"
    build(base, files)
    victims = [files[2], files[5], files[6]]
    build(tmp_path / "clean", [f for f in files if f not in victims])

    step, killed = 1, 0
    while True:
        target = tmp_path / f"killed{step}"
        shutil.copytree(base, target)
        code = remove_in_child(target, victims, kill_at=step)
        assert_consistent(target)  # readable, every visible entry intact, at any point
        records = {r.path for r in contents(target)[0]}
        assert records in ({str(f) for f in files},
                           {str(f) for f in files if f not in victims})  # nothing or all
        if code == 0:
            break
        killed += 1
        GalleryIndex(target, "model-a", SHAPES).remove(victims)  # run again: recovers
        assert_same_contents(target, tmp_path / "clean")
        assert_erased(target, victims)
        assert len(list(target.glob("features-*"))) == 1
        step += 1
    assert killed >= 5  # the new generation's files, the switch and the clean-up were hit
    assert_erased(target, victims)


# -- tal-index ---------------------------------------------------------------------------

def tal_index_run(*args):
    return CliRunner().invoke(tal_index, [str(a) for a in args])


def test_tal_index_info_remove_dry_run_and_delete_files(tmp_path):
    files = make_gallery(tmp_path / "g", 9)
    indexed(tmp_path / "idx", files)
    res = tal_index_run("info", tmp_path / "idx")
    assert res.exit_code == 0, res.output
    assert "9 entries" in res.output and "cameras: 0, 1, 2" in res.output
    assert "0 dead rows" in res.output

    res = tal_index_run("remove", tmp_path / "idx", "--where", "camera=2", "--dry-run")
    assert res.exit_code == 0 and "would remove 3 entries" in res.output
    assert len(GalleryIndex.open(tmp_path / "idx").load()) == 9

    res = tal_index_run("remove", tmp_path / "idx", "--where", "camera=2")
    assert res.exit_code == 0 and "removed 3 entries (6 left)" in res.output
    assert "crop files still exist" in res.stderr  # a sync would add them again
    assert_erased(tmp_path / "idx", [files[2], files[5], files[8]])

    rows = feature_bytes_of(files[0])
    res = tal_index_run("remove", tmp_path / "idx", "--path", files[0], "--delete-files")
    assert res.exit_code == 0 and "removed 1 entries (5 left)" in res.output
    assert not files[0].exists() and "still exist" not in res.stderr
    assert_erased(tmp_path / "idx", [files[0]], rows)


def test_tal_index_retain_keeps_the_window(tmp_path):
    files = make_gallery(tmp_path / "g", 12)
    indexed(tmp_path / "idx", files)
    res = tal_index_run("retain", tmp_path / "idx", "--max-age", "10m",
                        "--now", str(T0 + 1000), "--delete-files")
    # entries 0..3 are older than T0 + 400; 10 and 11 carry only their file time (now: newer)
    assert res.exit_code == 0, res.output
    assert "removed 4 entries (8 left)" in res.output
    assert [f.exists() for f in files[:5]] == [False] * 4 + [True]


@pytest.mark.parametrize("args, words", [
    (["remove", "{idx}"], "at least one condition"),
    (["remove", "{idx}", "--path", "x.jpg", "--where", "camera=1"], "either --path or"),
    (["retain", "{idx}", "--max-age", "soon"], "not a duration"),
    (["info", "{tmp}"], "not a gallery index"),
])
def test_tal_index_bad_input_is_one_line(tmp_path, args, words):
    files = make_gallery(tmp_path / "g", 3)
    indexed(tmp_path / "idx", files)
    res = tal_index_run(*[a.format(idx=tmp_path / "idx", tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in res.output


def test_cameras_are_numbered_as_in_the_file_names(tmp_path):
    """c3 in a name is camera 3 in `tal-index info` and `--where camera=3` (the README's
    example), as users read the names."""
    files = make_gallery(tmp_path / "g", 9)  # file i is camera i % 3 + 1 (c1, c2, c3)
    build(tmp_path / "idx", files)
    res = tal_index_run("info", tmp_path / "idx")
    assert res.exit_code == 0 and "cameras: 1, 2, 3\n" in res.output, res.output
    res = tal_index_run("remove", tmp_path / "idx", "--where", "camera=3", "--delete-files")
    assert res.exit_code == 0 and "removed 3 entries (6 left)" in res.output, res.output
    c3 = [f for f in files if "_c3s1_" in f.name]
    assert len(c3) == 3 and not any(f.exists() for f in c3)
    assert all(f.exists() for f in files if f not in c3)
    left = GalleryIndex.open(tmp_path / "idx").load().paths
    assert {Path(p).name.split("_")[1][:2] for p in left} == {"c1", "c2"}


def _as_written_before(index: Path) -> None:
    """The catalog as the version that numbered cameras from 0 wrote it."""
    with sqlite3.connect(index / "index.sqlite") as con:
        con.execute("UPDATE items SET camera = camera - 1")
        con.execute("DELETE FROM info WHERE key = 'camera_numbering'")


def test_an_index_with_cameras_numbered_from_0_is_renumbered_by_the_next_sync(tmp_path):
    files = make_gallery(tmp_path / "g", 9)
    build(tmp_path / "idx", files)
    _as_written_before(tmp_path / "idx")
    before = index_bytes(tmp_path / "idx")
    res = tal_index_run("remove", tmp_path / "idx", "--where", "camera=2", "--delete-files")
    assert res.exit_code == 2 and all(f.exists() for f in files)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "numbers cameras from 0" in errors[0], res.output
    assert "tal-infer --index" in errors[0]
    assert index_bytes(tmp_path / "idx") == before
    res = tal_index_run("info", tmp_path / "idx")
    assert res.exit_code == 0 and "cameras: 0, 1, 2 (numbered from 0" in res.output
    res = tal_index_run("remove", tmp_path / "idx", "--where", "label=1", "--dry-run")
    assert res.exit_code == 0 and "would remove 2 entries" in res.output  # not a camera filter

    extractor = CountingExtractor()
    report = GalleryIndex(tmp_path / "idx", "model-a", SHAPES).sync(files, extractor)
    assert extractor.seen == [] and report.unchanged == 9  # metadata only, no extraction
    assert "cameras: 1, 2, 3\n" in tal_index_run("info", tmp_path / "idx").output
    res = tal_index_run("remove", tmp_path / "idx", "--where", "camera=2")
    assert res.exit_code == 0 and "removed 3 entries (6 left)" in res.output


def test_open_reads_the_model_from_the_index_itself(tmp_path):
    files = make_gallery(tmp_path / "g", 3)
    indexed(tmp_path / "idx", files)
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.fingerprint == "model-a" and index.store.shapes == SHAPES
    with pytest.raises(GalleryIndexError, match="not a gallery index"):
        GalleryIndex.open(tmp_path / "g")


# -- the in-memory Gallery -------------------------------------------------------------------

def test_gallery_remove_where_and_drop_older_than():
    rng = np.random.default_rng(1)
    feats = {"di_res4": rng.standard_normal((6, 4, 3)).astype(np.float32)}
    gallery = Gallery()
    ids = gallery.add(feats, camera=[0, 1, 1, 2, None, 1], timestamp=[5, 6, 7, 8, 9, None],
                      meta=[{"track": 1}, {"track": 2}, {"track": 1}, None, {"track": 1}, "x"])
    assert gallery.remove_where(EntryFilter({"camera": 1, "track": 1})) == 1  # entry 2
    assert gallery.drop_older_than(6.5) == 2  # entries 0 and 1; no timestamp: kept
    features, left, cams, times, meta = gallery.snapshot()
    assert left.tolist() == [ids[3], ids[4], ids[5]]
    np.testing.assert_array_equal(features["di_res4"], feats["di_res4"][[3, 4, 5]])
    assert cams.tolist() == [2, -1, 1] and meta == [None, {"track": 1}, "x"]


# -- times must be finite ----------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["remove", "{idx}", "--before", "nan"], "'nan' is not a time"),
    (["remove", "{idx}", "--before", "inf"], "'inf' is not a time"),
    (["remove", "{idx}", "--before", "-Infinity"], "'-Infinity' is not a time"),
    (["retain", "{idx}", "--max-age", "1d", "--now", "nan"], "'nan' is not a time"),
    (["retain", "{idx}", "--max-age", "1d", "--now", "1e400"], "'1e400' is not a time"),
    (["retain", "{idx}", "--max-age", "9" * 400 + "d"], "is not a duration"),
])
def test_non_finite_times_are_one_line_and_erase_nothing(tmp_path, args, words):
    files = make_gallery(tmp_path / "g", 3)
    indexed(tmp_path / "idx", files)
    before = index_bytes(tmp_path / "idx")
    res = tal_index_run(*[a.format(idx=tmp_path / "idx") for a in args], "--delete-files")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in res.output
    assert all(f.exists() for f in files)
    assert index_bytes(tmp_path / "idx") == before


@pytest.mark.parametrize("cutoff", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_cutoffs_are_refused_by_the_api(tmp_path, cutoff):
    files = make_gallery(tmp_path / "g", 3)
    index = indexed(tmp_path / "idx", files)
    with pytest.raises(TalError, match="finite"):
        index.drop_older_than(cutoff)
    with pytest.raises(TalError, match="finite"):
        EntryFilter({"camera": 1}, before=cutoff)
    gallery = Gallery()
    gallery.add({"di_res4": np.zeros((2, 4, 3), np.float32)}, timestamp=[1.0, 2.0])
    with pytest.raises(TalError, match="finite"):
        gallery.drop_older_than(cutoff)
    assert len(index.load()) == 3 and len(gallery) == 2


# -- --where: every condition holds, values keep their type, keys must exist ----------------

def test_repeated_where_keys_must_agree():
    assert EntryFilter.parse(["camera=3", "camera=3"]).fields == {"camera": 3}
    with pytest.raises(TalError, match=r"--where camera=1 and camera=2: an entry has one "
                                       r"camera, so both cannot hold"):
        EntryFilter.parse(["camera=1", "label=4", "camera=2"])


def test_values_compare_with_their_type():
    flag = EntryFilter({"label": True})
    assert flag.matches({"label": True}, None)
    assert not flag.matches({"label": 1}, None) and not flag.matches({"label": 1.0}, None)
    assert not EntryFilter({"label": 1}).matches({"label": True}, None)
    assert not EntryFilter({"label": 0}).matches({"label": False}, None)
    assert EntryFilter({"label": 17}).matches({"label": 17.0}, None)  # the same number
    assert not EntryFilter({"label": "17"}).matches({"label": 17}, None)


@pytest.mark.parametrize("where, words", [
    (["lable=17"], "unknown filter key 'lable' (the entries have camera, label, track)"),
    (["camera=1", "trak=t1"], "unknown filter key 'trak'"),
])
def test_unknown_where_keys_are_refused_naming_the_known_ones(tmp_path, where, words):
    files = make_gallery(tmp_path / "g", 6)
    index = indexed(tmp_path / "idx", files)
    before = index_bytes(tmp_path / "idx")
    args = [a for w in where for a in ("--where", w)]
    res = tal_index_run("remove", tmp_path / "idx", *args, "--delete-files")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], res.output
    assert all(f.exists() for f in files) and index_bytes(tmp_path / "idx") == before
    with pytest.raises(TalError, match="unknown filter key"):
        index.remove_where(EntryFilter.parse(where))


def test_a_filter_that_matches_nothing_says_so(tmp_path):
    files = make_gallery(tmp_path / "g", 6)
    indexed(tmp_path / "idx", files)
    res = tal_index_run("remove", tmp_path / "idx", "--where", "label=true")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["no entry matches --where label=true; nothing removed"]
    res = tal_index_run("remove", tmp_path / "idx", "--path", tmp_path / "g" / "x.jpg")
    assert res.output.splitlines() == [f"no entry matches --path {tmp_path / 'g' / 'x.jpg'}; "
                                       "nothing removed"]
    res = tal_index_run("retain", tmp_path / "idx", "--max-age", "2w", "--now", T0)
    assert res.output.splitlines() == ["no entry matches --max-age 2w; nothing removed"]
    assert len(GalleryIndex.open(tmp_path / "idx").load()) == 6
