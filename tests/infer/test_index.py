"""Gallery index: incremental sync, fingerprints, bad files, and SIGKILL at any point."""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from tal_infer.cli import main as tal_infer
from tal_infer.errors import DataError
from tal_infer.images import ImageError
from tal_infer.index import (GalleryIndex, GalleryIndexError, IndexMismatchError,
                             market_metadata)
from tal_infer.images import MAX_IMAGE_BYTES
from tal_infer.naming import BadNameError, parse_market_name

from runtime_fixtures import GALLERY_NAMES, QUERY_NAMES, write_crops

SHAPES = {"ds_res4": (2, 6, 4), "di_res4": (6, 4)}
HERE = Path(__file__).resolve().parent


def features_for_digest(digest: str) -> dict[str, np.ndarray]:
    """The features a file's content 'has' (what a deterministic extractor would give)."""
    rng = np.random.default_rng(int(digest[:16], 16))
    return {k: rng.standard_normal(shape).astype(np.float16) for k, shape in SHAPES.items()}


def extract_features(paths):
    """A stand-in extractor: features from the content hash; "BAD..." files are unreadable."""
    out = {k: [] for k in SHAPES}
    for path in paths:
        data = Path(path).read_bytes()
        if data.startswith(b"BAD"):
            raise ImageError(path, "not a readable image (corrupt, truncated or not an image "
                                   "file)")
        for key, value in features_for_digest(hashlib.sha256(data).hexdigest()).items():
            out[key].append(value)
    return {k: np.stack(v) for k, v in out.items()}


class CountingExtractor:
    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, paths):
        self.seen.extend(paths)
        return extract_features(paths)


def market_file(folder: Path, i: int, content: bytes | None = None) -> Path:
    path = folder / f"{i // 2 + 1:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else f"person crop {i}".encode() * (i + 1))
    return path


def make_gallery(folder: Path, count: int) -> list[Path]:
    return [market_file(folder, i) for i in range(count)]


def build(directory, paths, **kwargs):
    index = GalleryIndex(directory, "model-a", SHAPES)
    return index, index.sync(paths, extract_features, batch_size=3, **kwargs)


def contents(directory):
    """(records, features gathered in record order) of an index, for comparisons."""
    snapshot = GalleryIndex(directory, "model-a", SHAPES).load()
    gathered = {k: np.concatenate([c[k] for _, _, c in snapshot.iter_chunks(4)] or
                                  [np.empty((0, *SHAPES[k]), np.float16)]) for k in SHAPES}
    return snapshot.records, gathered


def assert_same_contents(a, b):
    records_a, features_a = contents(a)
    records_b, features_b = contents(b)
    assert records_a == records_b
    for key in SHAPES:
        np.testing.assert_array_equal(features_a[key], features_b[key])


def assert_consistent(directory):
    """Every visible record has exactly the features of the content it was indexed with."""
    records, features = contents(directory)
    for i, record in enumerate(records):
        for key, value in features_for_digest(record.sha256).items():
            np.testing.assert_array_equal(features[key][i], value)


def test_incremental_add_remove_and_unchanged(tmp_path):
    files = make_gallery(tmp_path / "g", 8)
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    extractor = CountingExtractor()
    report = index.sync(files[:6], extractor, batch_size=4)
    assert (report.added, report.removed, report.unchanged) == (6, 0, 0)
    assert sorted(extractor.seen) == sorted(str(p) for p in files[:6])

    extractor.seen.clear()
    report = index.sync(files[:6], extractor)
    assert extractor.seen == [] and report.unchanged == 6

    report = index.sync(files[1:8], extractor)
    assert sorted(extractor.seen) == [str(files[6]), str(files[7])]
    assert (report.added, report.removed, report.unchanged) == (2, 1, 5)
    snapshot = index.load()
    assert snapshot.paths == sorted(str(p) for p in files[1:8])
    assert_consistent(tmp_path / "idx")


def test_changed_file_is_re_extracted_and_touched_file_is_not(tmp_path):
    files = make_gallery(tmp_path / "g", 4)
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    index.sync(files, extract_features)
    extractor = CountingExtractor()

    files[1].write_bytes(b"a different person")
    report = index.sync(files, extractor)
    assert extractor.seen == [str(files[1])] and report.updated == 1 and report.unchanged == 3

    stat = files[2].stat()
    os.utime(files[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes
    extractor.seen.clear()
    report = index.sync(files, extractor)
    assert extractor.seen == [] and report.unchanged == 4
    record = {r.path: r for r in index.load().records}[str(files[2])]
    assert record.mtime_ns == stat.st_mtime_ns + 10**9
    assert_consistent(tmp_path / "idx")
    clean = tmp_path / "clean"
    build(clean, files)
    assert_same_contents(tmp_path / "idx", clean)


def test_metadata_from_names_and_from_a_function(tmp_path):
    files = make_gallery(tmp_path / "g", 3)
    other = tmp_path / "g" / "cam7_frame12.png"
    other.write_bytes(b"unlabelled crop")
    _, _ = build(tmp_path / "idx", files + [other])
    records = {Path(r.path).name: r for r in GalleryIndex(tmp_path / "idx", "model-a",
                                                          SHAPES).load().records}
    # cameras as the names number them: 0002_c3s1_000002_00.jpg is camera 3
    assert (records[files[2].name].camera, records[files[2].name].label) == (3, 2)
    assert (records[other.name].camera, records[other.name].label) == (None, None)
    assert market_metadata(str(files[1])) == {"camera": 2, "label": 1}

    def meta(path):
        return {"camera": np.int64(4), "timestamp": 12.5, "label": "alice", "track": 9}

    index = GalleryIndex(tmp_path / "idx2", "model-a", SHAPES)
    index.sync(files, extract_features, metadata_fn=meta)
    record = index.load().records[0]
    assert (record.camera, record.timestamp, record.label, record.extra) == (4, 12.5, "alice",
                                                                             {"track": 9})


def test_fingerprint_and_shape_mismatch(tmp_path):
    files = make_gallery(tmp_path / "g", 3)
    build(tmp_path / "idx", files)
    with pytest.raises(IndexMismatchError, match="built for model 'model-a', not 'model-b'"):
        GalleryIndex(tmp_path / "idx", "model-b", SHAPES)
    with pytest.raises(IndexMismatchError, match="holds features"):
        GalleryIndex(tmp_path / "idx", "model-a", {"di_res4": (6, 4)})
    rebuilt = GalleryIndex(tmp_path / "idx", "model-b", SHAPES, rebuild=True)
    assert len(rebuilt.load()) == 0
    extractor = CountingExtractor()
    assert rebuilt.sync(files, extractor).added == 3 and len(extractor.seen) == 3
    assert [p.name for p in (tmp_path / "idx").glob("features-*")] == ["features-1"]


def test_on_error_skip_and_fail(tmp_path):
    files = make_gallery(tmp_path / "g", 7)
    files[2].write_bytes(b"BAD jpeg bytes")
    missing = tmp_path / "g" / "0009_c1s1_000099_00.jpg"
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    report = index.sync(files + [missing], extract_features, batch_size=3, on_error="skip")
    assert [p for p, _ in report.skipped] == sorted([str(files[2]), str(missing)])
    assert dict(report.skipped)[str(files[2])].startswith("not a readable image")
    assert dict(report.skipped)[str(missing)] == "file not found"
    assert report.added == 6 and len(index.load()) == 6
    assert_consistent(tmp_path / "idx")

    # a known file that turns unreadable leaves the index, as in a clean build
    files[4].write_bytes(b"BAD now")
    report = index.sync(files, extract_features, on_error="skip")
    assert str(files[4]) in dict(report.skipped)
    assert str(files[4]) not in index.load().paths

    other = GalleryIndex(tmp_path / "idx2", "model-a", SHAPES)
    with pytest.raises(ImageError, match="not a readable image"):
        other.sync(files, extract_features, batch_size=2)
    assert other.load().paths == sorted(str(p) for p in files[:2])  # first batch committed
    with pytest.raises(DataError, match=r"0009_c1s1_000099_00.jpg: file not found"):
        other.sync([missing], extract_features)


HUGE = "99999999999999999999"  # fits no integer column (SQLite, numpy int64)


def test_a_huge_number_in_a_name_is_a_bad_name_not_a_crash(tmp_path):
    files = make_gallery(tmp_path / "g", 4)
    huge_pid = tmp_path / "g" / f"{HUGE}_c1s1_000001_00.jpg"
    huge_cam = tmp_path / "g" / f"0001_c{HUGE}s1_000002_00.jpg"
    huge_pid.write_bytes(b"a crop")
    huge_cam.write_bytes(b"another crop")
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    with pytest.raises(DataError) as err:
        index.sync(files + [huge_pid], extract_features)
    assert str(err.value) == (f"{huge_pid}: bad file name: identity number {HUGE} is out of "
                              "range (at most 2,147,483,647)")
    report = index.sync(files + [huge_pid, huge_cam], extract_features, on_error="skip")
    assert [p for p, _ in report.skipped] == sorted([str(huge_pid), str(huge_cam)])
    assert dict(report.skipped)[str(huge_cam)].startswith("bad file name: camera number")
    assert index.load().paths == sorted(map(str, files))
    assert_consistent(tmp_path / "idx")


def test_a_file_over_the_image_size_cap_is_skipped_unread(tmp_path):
    files = make_gallery(tmp_path / "g", 2)
    big = tmp_path / "g" / "0009_c1s1_000099_00.jpg"
    with open(big, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)           # sparse: no disk used
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    report = index.sync(files + [big], extract_features, on_error="skip")
    assert dict(report.skipped)[str(big)] == (f"is {MAX_IMAGE_BYTES + 1:,} bytes, over the "
                                              f"{MAX_IMAGE_BYTES:,}-byte limit for this kind "
                                              "of file")  # refused by its size
    assert index.load().paths == sorted(map(str, files))


@pytest.mark.parametrize("meta, words", [
    ({"camera": 2**70}, f"bad metadata: camera {2**70} does not fit a 64-bit integer"),
    ({"label": -2**64}, f"bad metadata: label {-2**64} does not fit a 64-bit integer"),
    ({"timestamp": float("nan")}, "bad metadata: timestamp nan is not a finite time"),
    ({"camera": "left"}, "bad metadata: camera 'left' must be a whole number"),
])
def test_metadata_the_catalog_cannot_hold_is_refused_or_skipped(tmp_path, meta, words):
    files = make_gallery(tmp_path / "g", 3)
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    odd = lambda path: meta if path == str(files[1]) else {}  # noqa: E731
    with pytest.raises(DataError, match=re.escape(f"{files[1]}: {words}")):
        index.sync(files, extract_features, odd)
    report = index.sync(files, extract_features, odd, on_error="skip")
    assert [p for p, _ in report.skipped] == [str(files[1])]
    assert index.load().paths == [str(files[0]), str(files[2])]


def test_market_names_give_the_camera_as_written_and_counted_from_0():
    parsed = parse_market_name("0002_c3s1_000451_03.jpg")
    assert (parsed.pid, parsed.camera, parsed.camid, parsed.sequence, parsed.frame) == (
        2, 3, 2, 1, 451)
    assert parse_market_name("-1_c1_000002.jpg")[:2] == (-1, 1)
    assert parse_market_name("0002_c0s1_000451_03.jpg") is None  # no camera 0 in the layout
    assert parse_market_name("cam7_frame12.png") is None
    assert parse_market_name(f"{2**31 - 1}_c{2**31 - 1}_1.jpg")[:2] == (2**31 - 1, 2**31 - 1)
    with pytest.raises(BadNameError, match=r"camera number 2147483648 is out of range"):
        parse_market_name(f"0001_c{2**31}_1.jpg")


def test_a_fifo_in_the_gallery_is_refused_or_skipped_without_blocking(tmp_path):
    files = make_gallery(tmp_path / "g", 3)
    fifo = tmp_path / "g" / "0009_c1s1_000099_00.jpg"
    os.mkfifo(fifo)
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    outcome = {}

    def sync(on_error):
        try:
            outcome[on_error] = index.sync(files + [fifo], extract_features, on_error=on_error)
        except DataError as err:
            outcome[on_error] = err

    for on_error in ("fail", "skip"):
        worker = threading.Thread(target=sync, args=(on_error,), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), f"sync blocked on a FIFO (on_error={on_error})"
    assert str(outcome["fail"]) == (f"{fifo}: is a named pipe (FIFO); only regular files are "
                                    "read")
    assert outcome["skip"].skipped == [(str(fifo), "is a named pipe (FIFO); only regular "
                                                   "files are read")]
    assert index.load().paths == sorted(map(str, files))


def test_tal_infer_refuses_or_skips_a_name_with_a_huge_number(fake_bundle, tmp_path):
    queries = write_crops(tmp_path / "q", QUERY_NAMES[:2], seed=1)[0].parent
    gallery = write_crops(tmp_path / "g", GALLERY_NAMES[:4], seed=2)
    bad = gallery[0].parent / f"{HUGE}_c1s1_000001_00.jpg"
    bad.write_bytes(gallery[0].read_bytes())
    args = ["--gallery", gallery[0].parent, "--queries", queries, "--model", fake_bundle,
            "--quiet", "--device", "cpu", "--index", tmp_path / "idx"]
    run = lambda *extra: CliRunner().invoke(tal_infer, [str(a) for a in (*args, *extra)])  # noqa: E731
    refused = run()
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: bad file name: identity number {HUGE} is out of range "
                      "(at most 2,147,483,647)"]
    skipped = run("--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert f"  {bad}: bad file name: identity number" in skipped.stderr
    assert GalleryIndex.open(tmp_path / "idx").load().paths == sorted(map(str, gallery))
    bad = bad.rename(bad.with_name(f"0001_c{HUGE}s1_000001_00.jpg"))  # camera, no index
    res = CliRunner().invoke(tal_infer, [str(a) for a in (*args[:-2], "--exclude-same-camera")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: bad file name: camera number {HUGE} is out of range "
                      "(at most 2,147,483,647)"]


def test_load_maps_features_without_copy(tmp_path):
    files = make_gallery(tmp_path / "g", 6)
    index, _ = build(tmp_path / "idx", files)
    files[0].write_bytes(b"changed content")  # re-extracted rows go to the end
    index.sync(files, extract_features)
    snapshot = index.load()
    assert all(isinstance(m, np.memmap) for m in snapshot.features.values())
    assert list(snapshot.rows) == [6, 1, 2, 3, 4, 5]
    for key in SHAPES:  # gathered chunk = plain fancy indexing of the stored rows
        np.testing.assert_array_equal(snapshot.chunk(0, 4)[key],
                                      np.asarray(snapshot.features[key])[[6, 1, 2, 3]])
    assert np.shares_memory(snapshot.chunk(1, 5)["di_res4"], snapshot.features["di_res4"])
    index.compact()
    snapshot = index.load()
    assert list(snapshot.rows) == list(range(6))
    assert_consistent(tmp_path / "idx")


def test_empty_index_and_bad_folders(tmp_path):
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    empty = index.load()
    assert len(empty) == 0 and empty.features["ds_res4"].shape == (0, 2, 6, 4)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(GalleryIndexError, match="not a gallery index"):
        GalleryIndex(tmp_path / "photos", "model-a", SHAPES)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(GalleryIndexError, match="cannot use the index catalog"):
        GalleryIndex(tmp_path / "broken", "model-a", SHAPES)
    with pytest.raises(ValueError, match="expected"):
        index.sync(make_gallery(tmp_path / "g", 2),
                   lambda paths: {k: np.zeros((len(paths), 3)) for k in SHAPES})


def test_second_writer_is_refused(tmp_path):
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    with open(tmp_path / "idx" / "lock", "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(GalleryIndexError, match="being updated by another process"):
            index.sync(make_gallery(tmp_path / "g", 1), extract_features)
        assert len(index.load()) == 0  # reading needs no lock


# -- crash safety: a real subprocess, killed with SIGKILL ------------------------------------

CHILD = """
import os, signal, sys
sys.path.insert(0, {here!r})
import crash_points
from test_index import SHAPES, extract_features
from tal_infer.index import GalleryIndex

index_dir, list_file = sys.argv[1], sys.argv[2]
kill_at, kill_in_batch = int(sys.argv[3]), int(sys.argv[4])
crash_points.install(kill_at)
batches = 0

def extract(paths):
    global batches
    batches += 1
    if batches == kill_in_batch:
        os.kill(os.getpid(), signal.SIGKILL)
    return extract_features(paths)

paths = open(list_file).read().split("\\n")
GalleryIndex(index_dir, "model-a", SHAPES).sync(paths, extract, batch_size=3)
"""


def run_child(index_dir: Path, files: list[Path], kill_at: int = 0,
              kill_in_batch: int = 0) -> int:
    """Sync in a fresh interpreter, SIGKILLed at its kill_at-th durability step (after each
    fsync, before and after each folder removal, before and after each commit;
    crash_points.py) or while extracting its kill_in_batch-th batch; 0: never. Returns the
    exit code (-9 when killed)."""
    list_file = index_dir.parent / f"{index_dir.name}.txt"
    list_file.write_text("\n".join(str(p) for p in files))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=str(HERE)), str(index_dir), str(list_file),
         str(kill_at), str(kill_in_batch)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


def test_build_killed_repeatedly_resumes_to_a_clean_build(tmp_path):
    files = make_gallery(tmp_path / "g", 18)
    build(tmp_path / "clean", files)
    target = tmp_path / "killed"
    codes = []
    for kill_at in (1, 2, 4, 6, 3, 5):  # six runs, each killed at a different step
        codes.append(run_child(target, files, kill_at=kill_at))
        if target.joinpath("index.sqlite").exists():
            assert_consistent(target)
    assert codes.count(-signal.SIGKILL) == 6
    assert run_child(target, files) == 0
    assert_same_contents(target, tmp_path / "clean")


def test_build_killed_while_extracting_resumes_to_a_clean_build(tmp_path):
    """Killed inside extract_fn (between durability steps, where a kill by a timer lands
    most often): the batches committed before stay, the rest is extracted on resume."""
    files = make_gallery(tmp_path / "g", 18)  # 6 batches of 3
    build(tmp_path / "clean", files)
    target = tmp_path / "killed"
    committed = []
    for kill_in_batch in (3, 1, 2):  # each run resumes, then is killed in a later batch
        assert run_child(target, files, kill_in_batch=kill_in_batch) == -signal.SIGKILL
        assert_consistent(target)
        committed.append(len(contents(target)[0]))
    assert committed == [6, 6, 9]  # 2 batches, none more, 1 more
    assert run_child(target, files) == 0
    assert_same_contents(target, tmp_path / "clean")


def test_incremental_sync_with_compaction_killed_at_every_step(tmp_path):
    files = make_gallery(tmp_path / "g", 12)
    base = tmp_path / "base"
    build(base, files)
    for f in files[:7]:  # 7 removed, 2 changed, 2 added: dead rows force a compaction
        f.unlink()
    files[8].write_bytes(b"new look")
    files[9].write_bytes(b"new look too")
    new_files = files[7:] + [market_file(tmp_path / "g", i) for i in (20, 21)]
    build(tmp_path / "clean", new_files)

    step, killed = 1, 0
    while True:
        target = tmp_path / f"killed{step}"
        shutil.copytree(base, target)
        code = run_child(target, new_files, kill_at=step)
        assert_consistent(target)
        if code == 0:
            break
        killed += 1
        build(target, new_files)  # resume
        assert_same_contents(target, tmp_path / "clean")
        assert len(list(target.glob("features-*"))) == 1
        step += 1
    assert killed >= 20  # appends, compaction writes, the switch and the clean-up were all hit
    assert_same_contents(target, tmp_path / "clean")
