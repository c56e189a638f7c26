"""tal-infer end to end on a contract-conforming bundle: outputs, metrics, the gallery index
(incremental, model fingerprint, SIGKILL and resume) and every kind of bad input."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

from tal_infer import ReIDEngine
from tal_infer.bundle import load_bundle
from tal_infer.cli import main
from tal_infer.engine import bundle_index
from tal_infer.metrics import evaluate_scores

from runtime_fixtures import write_crops, write_fake_bundle

HERE = Path(__file__).resolve().parent


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def base(bundle, folders, *extra):
    queries, gallery = folders
    return ["--gallery", gallery, "--queries", queries, "--model", bundle,
            "--device", "cpu", *extra]


def one_error_line(result) -> str:
    """The run failed cleanly: non-zero exit, one 'error:' line, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_outputs_agree_with_the_engine(fake_bundle, crop_folders, tmp_path):
    res = run(*base(fake_bundle, crop_folders, "--topk", "3", "--out", tmp_path / "r.json",
                    "--scores", tmp_path / "s.npz", "--report", tmp_path / "rep"))
    assert res.exit_code == 0, res.output + res.stderr
    saved = np.load(tmp_path / "s.npz")
    queries, gallery = list(saved["queries"]), list(saved["gallery"])
    assert len(queries) == 4 and len(gallery) == 12 and all(os.path.isabs(p) for p in queries)
    engine = ReIDEngine(fake_bundle, device="cpu")
    want = engine.scores(engine.embed_files(queries).features,
                         engine.embed_files(gallery).features)
    np.testing.assert_allclose(saved["scores"], want, rtol=0, atol=1e-5)
    ranks = json.loads((tmp_path / "r.json").read_text())
    for qi, entry in enumerate(ranks):
        assert entry["query"] == queries[qi]
        order = np.argsort(-want[qi], kind="stable")[:3]
        assert [m["gallery"] for m in entry["matches"]] == [gallery[c] for c in order]
    pid = lambda p: int(Path(p).name.split("_")[0])  # noqa: E731
    cam = lambda p: int(Path(p).name.split("_")[1][1]) - 1  # noqa: E731
    m = evaluate_scores(want, [pid(p) for p in queries], [pid(p) for p in gallery],
                        [cam(p) for p in queries], [cam(p) for p in gallery])
    assert f"mAP {100 * m['mAP']:.1f}%" in res.output
    assert (tmp_path / "rep" / "index.html").is_file()
    assert len(list((tmp_path / "rep" / "ranks").glob("*.png"))) == 4


def test_csv_with_same_camera_excluded_and_rerank(fake_bundle, crop_folders, tmp_path):
    res = run(*base(fake_bundle, crop_folders, "--out", tmp_path / "r.csv",
                    "--exclude-same-camera", "--rerank", "--topk", "12"))
    assert res.exit_code == 0, res.stderr
    rows = [l.split(",") for l in (tmp_path / "r.csv").read_text().splitlines()[1:]]
    assert rows and all(Path(q).name.split("_")[1][:2] != Path(g).name.split("_")[1][:2]
                        for q, _, g, _ in rows)
    assert len(rows) == 4 * 11  # one gallery crop per query shares its camera (c1)


def test_index_is_incremental(fake_bundle, crop_folders, tmp_path):
    queries, gallery = crop_folders
    index = tmp_path / "idx"
    args = base(fake_bundle, crop_folders, "--index", index, "--scores", tmp_path / "s.npz")
    res = run(*args, "--report", tmp_path / "rep")
    assert res.exit_code == 0 and "12 added, 0 updated, 0 removed, 0 unchanged" in res.stderr
    assert len(list((tmp_path / "rep" / "correspondences").glob("*.png"))) == 4
    # indexed scores vs in-memory ones: test_index_scores.py (fp16-rounded features, 1e-5)
    (gallery / "0005_c2s1_000051_00.jpg").unlink()
    write_crops(gallery, ["0006_c3s1_000061_00.jpg"], seed=5)
    res = run(*args)
    assert res.exit_code == 0 and "1 added, 0 updated, 1 removed, 11 unchanged" in res.stderr
    assert sorted(Path(p).name for p in np.load(tmp_path / "s.npz")["gallery"]) == \
        sorted(p.name for p in gallery.iterdir())


def test_index_of_another_model_is_refused_or_rebuilt(fake_bundle, crop_folders, tmp_path):
    other = write_fake_bundle(tmp_path / "other", seed=7)
    index = tmp_path / "idx"
    assert run(*base(fake_bundle, crop_folders, "--index", index)).exit_code == 0
    line = one_error_line(run(*base(other, crop_folders, "--index", index)))
    assert "index was built for model" in line and "--rebuild-index" in line
    res = run(*base(other, crop_folders, "--index", index, "--rebuild-index"))
    assert res.exit_code == 0 and "12 added" in res.stderr
    contents = bundle_index(load_bundle(other), index).load()
    assert len(contents) == 12


def _committed_rows(index: Path) -> int:
    with sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True) as con:
        return con.execute("SELECT COUNT(*) FROM items").fetchone()[0]


KILLED_CLI = """
import sys
sys.path.insert(0, {here!r})
import crash_points
crash_points.install(int(sys.argv[1]))
from tal_infer.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_killed_index_build_resumes_to_a_clean_build(fake_bundle, tmp_path):
    names = [f"{i % 40 + 1:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg" for i in range(240)]
    write_crops(tmp_path / "g", names, seed=3)
    write_crops(tmp_path / "q", names[:2], seed=4)
    folders = (tmp_path / "q", tmp_path / "g")
    args = [*map(str, base(fake_bundle, folders, "--index", tmp_path / "idx", "--batch", "1"))]
    # SIGKILL at the 120th durability step (crash_points.py): some tens of batches in
    killed = subprocess.run([sys.executable, "-c", KILLED_CLI.format(here=str(HERE)), "120",
                             *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = _committed_rows(tmp_path / "idx")
    assert 10 <= partial < 240
    res = run(*base(fake_bundle, folders, "--index", tmp_path / "idx", "--batch", "1"))
    assert res.exit_code == 0 and f"{240 - partial} added" in res.stderr, res.stderr
    res = run(*base(fake_bundle, folders, "--index", tmp_path / "clean", "--batch", "1"))
    assert res.exit_code == 0
    bundle = load_bundle(fake_bundle)
    resumed = bundle_index(bundle, tmp_path / "idx").load()
    clean = bundle_index(bundle, tmp_path / "clean").load()
    assert resumed.paths == clean.paths and len(clean) == 240
    for key in bundle.features:
        np.testing.assert_array_equal(resumed.chunk(0, 240)[key], clean.chunk(0, 240)[key])


def _bad(kind: str, path: Path) -> None:
    good = np.full((40, 20, 3), 99, np.uint8)
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "corrupt":
        ok, data = cv2.imencode(".jpg", good)
        path.write_bytes(data.tobytes()[:40])
    elif kind == "not-an-image":
        path.write_text("this is a text file with an image extension")
    elif kind == "tiny":
        cv2.imwrite(str(path), good[:4, :4])


@pytest.mark.parametrize("kind, words", [
    ("zero-byte", "empty file (0 bytes)"),
    ("corrupt", "not a readable image"),
    ("not-an-image", "not a readable image"),
    ("tiny", "image too small"),
])
@pytest.mark.parametrize("where", ["gallery", "query"])
def test_bad_image_names_the_file_and_skip_continues(fake_bundle, crop_folders, tmp_path,
                                                     kind, words, where):
    folder = crop_folders[0] if where == "query" else crop_folders[1]
    bad = folder / "0002_c3s1_000777_00.jpg"
    _bad(kind, bad)
    line = one_error_line(run(*base(fake_bundle, crop_folders)))
    assert f"{bad}: {words}" in line
    res = run(*base(fake_bundle, crop_folders, "--on-error", "skip", "--scores",
                    tmp_path / "s.npz"))
    assert res.exit_code == 0, res.stderr
    assert "skipped 1 unreadable file(s)" in res.stderr and f"{bad}: {words}" in res.stderr
    saved = np.load(tmp_path / "s.npz")
    assert str(bad) not in list(saved["queries"]) + list(saved["gallery"])


@pytest.mark.parametrize("index", [False, True])
def test_a_bad_name_fails_before_any_extraction_and_skip_leaves_it_out(
        fake_bundle, crop_folders, tmp_path, monkeypatch, index):
    huge = "9" * 20                      # a camera number no integer column holds
    bad = crop_folders[1] / f"0002_c{huge}s1_000777_00.jpg"
    cv2.imwrite(str(bad), np.full((40, 20, 3), 99, np.uint8))
    calls = []
    embed_files = ReIDEngine.embed_files
    monkeypatch.setattr(ReIDEngine, "embed_files",
                        lambda self, *a, **k: calls.append(a) or embed_files(self, *a, **k))
    extra = ("--index", tmp_path / "idx") if index else ()
    line = one_error_line(run(*base(fake_bundle, crop_folders, *extra)))
    assert f"{bad}: bad file name: camera number {huge} is out of range" in line
    assert calls == []                   # refused before a single crop was extracted
    res = run(*base(fake_bundle, crop_folders, *extra, "--on-error", "skip",
                    "--exclude-same-camera", "--scores", tmp_path / "s.npz"))
    assert res.exit_code == 0, res.stderr
    assert "skipped 1 unreadable file(s)" in res.stderr and f"{bad}: bad file name" in res.stderr
    assert str(bad) not in list(np.load(tmp_path / "s.npz")["gallery"])


def test_failed_index_run_leaves_a_consistent_index(fake_bundle, crop_folders, tmp_path):
    _bad("corrupt", crop_folders[1] / "0003_c3s1_000999_00.jpg")
    index = tmp_path / "idx"
    one_error_line(run(*base(fake_bundle, crop_folders, "--index", index, "--batch", "2")))
    bundle = load_bundle(fake_bundle)
    contents = bundle_index(bundle, index).load()
    assert all(Path(p).is_file() and "000999" not in p for p in contents.paths)
    res = run(*base(fake_bundle, crop_folders, "--index", index, "--on-error", "skip"))
    assert res.exit_code == 0 and "skipped 1" in res.stderr
    assert len(bundle_index(bundle, index).load()) == 12


def test_gray_rgba_and_16bit_files_are_converted(fake_bundle, crop_folders):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    gallery = crop_folders[1]
    cv2.imwrite(str(gallery / "0007_c2s1_000001_00.png"), img[:, :, 0])
    cv2.imwrite(str(gallery / "0007_c2s1_000002_00.png"), np.dstack([img, img[:, :, :1]]))
    cv2.imwrite(str(gallery / "0007_c2s1_000003_00.png"), img.astype(np.uint16) * 257)
    (gallery / "notes.txt").write_text("not an image, ignored")
    res = run(*base(fake_bundle, crop_folders))
    assert res.exit_code == 0, res.stderr


def test_empty_folder_missing_folder_and_bad_bundle(fake_bundle, crop_folders, tmp_path):
    (tmp_path / "empty").mkdir()
    queries, gallery = crop_folders
    line = one_error_line(run(*base(fake_bundle, (tmp_path / "empty", gallery))))
    assert f"{tmp_path / 'empty'}: no images found" in line
    line = one_error_line(run(*base(fake_bundle, (queries, tmp_path / "nope"))))
    assert "nope: folder not found" in line
    old = write_fake_bundle(tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(run(*base(old, crop_folders)))
    assert "manifest.json: bundle format version 0 is not supported" in line
    line = one_error_line(run(*base(fake_bundle, crop_folders, "--out", tmp_path / "r.txt")))
    assert "use a .json or .csv" in line


def test_default_model_is_the_latest_export(fake_bundle, crop_folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    queries, gallery = crop_folders
    line = one_error_line(run("--gallery", gallery, "--queries", queries, "--quiet"))
    assert "no model bundle found" in line
    write_fake_bundle(tmp_path / "export" / "run-a")
    res = run("--gallery", gallery, "--queries", queries, "--device", "cpu")
    assert res.exit_code == 0 and "run-a" in res.stderr


def test_help_has_examples():
    res = run("--help")
    assert res.exit_code == 0 and "Examples:" in res.output and "--rebuild-index" in res.output
