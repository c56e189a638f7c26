"""tal-infer on damaged indexes, unseen identities, bad output paths and decompression bombs:
one `error:` line and exit 2 before any work, or an ordinary run; nothing zeroed or lost."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tal_infer.bundle import load_bundle
from tal_infer.engine import ReIDEngine, bundle_index
from tal_infer.images import DEFAULT_MAX_PIXELS
from tal_infer.metrics import evaluate_scores

from runtime_fixtures import write_crops
from test_cli import base, one_error_line, run
from test_image_headers import png_header


@pytest.fixture()
def no_extraction(monkeypatch):
    """Any image extraction fails the test: the run must stop before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(ReIDEngine, "embed", refuse)


def index_contents(bundle_dir: Path, index: Path):
    return bundle_index(load_bundle(bundle_dir), index).load()


def committed_rows(index: Path) -> int:
    with sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True) as con:
        return int(con.execute("SELECT value FROM info WHERE key = 'rows'").fetchone()[0])


def shorten_feature_file(index: Path, keep_rows: int) -> tuple[Path, bytes]:
    path = sorted(index.glob("features-*/*.f32"))[0]  # an fp32 bundle's index stores fp32
    rows = committed_rows(index)
    data = path.read_bytes()[:path.stat().st_size // rows * keep_rows]
    path.write_bytes(data)
    return path, data


def test_short_feature_file_then_a_new_image_is_one_error_and_nothing_zeroed(
        fake_bundle, crop_folders, tmp_path):
    queries, gallery = crop_folders
    index = tmp_path / "idx"
    assert run(*base(fake_bundle, crop_folders, "--index", index)).exit_code == 0
    path, kept = shorten_feature_file(index, 8)
    write_crops(gallery, ["0006_c3s1_000061_00.jpg"], seed=5)
    res = run(*base(fake_bundle, crop_folders, "--index", index, "--out", tmp_path / "r.json"))
    line = one_error_line(res)
    assert res.exit_code == 2
    assert re.fullmatch(rf"error: {re.escape(str(index))}: index is damaged: the catalog commits "
                        rf"12 feature rows, features-0/{path.stem}\.f32 holds 8 of them; "
                        rf"rebuild it with --rebuild-index", line), line
    assert path.read_bytes() == kept and committed_rows(index) == 12  # nothing padded or added
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("damage", ["garbage catalog", "short feature file"])
def test_rebuild_index_starts_a_damaged_index_over(fake_bundle, crop_folders, tmp_path, damage):
    index = tmp_path / "idx"
    assert run(*base(fake_bundle, crop_folders, "--index", index)).exit_code == 0
    if damage == "garbage catalog":
        (index / "index.sqlite").write_bytes(b"\x00garbage" * 300)
    else:
        shorten_feature_file(index, 3)
    one_error_line(run(*base(fake_bundle, crop_folders, "--index", index)))
    res = run(*base(fake_bundle, crop_folders, "--index", index, "--rebuild-index",
                    "--scores", tmp_path / "indexed.npz"))
    assert res.exit_code == 0, res.stderr
    assert "12 added, 0 updated, 0 removed, 0 unchanged" in res.stderr
    assert run(*base(fake_bundle, crop_folders, "--scores", tmp_path / "memory.npz")
               ).exit_code == 0
    indexed, memory = (np.load(tmp_path / n)["scores"] for n in ("indexed.npz", "memory.npz"))
    np.testing.assert_allclose(indexed, memory, rtol=0,
                               atol=1e-2 * (1 + np.abs(memory).max()))  # fp16 storage
    assert len(index_contents(fake_bundle, index)) == 12


@pytest.mark.parametrize("extra", [[], ["index.sqlite"]])
def test_rebuild_index_refuses_a_folder_that_is_not_an_index(fake_bundle, crop_folders, tmp_path,
                                                             extra, no_extraction):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"my holiday")
    for name in extra:
        (folder / name).write_bytes(b"garbage" * 50)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    line = one_error_line(run(*base(fake_bundle, crop_folders, "--index", folder,
                                    "--rebuild-index")))
    assert "holiday.jpg" in line or "not a gallery index" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_queries_of_identities_the_gallery_lacks_are_ordinary(fake_bundle, crop_folders,
                                                              tmp_path):
    queries, gallery = crop_folders
    unseen = tmp_path / "unseen"
    write_crops(unseen, ["0007_c1s1_000070_00.jpg", "0008_c1s1_000080_00.jpg"], seed=6)
    outputs = ["--out", tmp_path / "r.json", "--scores", tmp_path / "s.npz", "--report",
               tmp_path / "rep"]
    res = run(*base(fake_bundle, (unseen, gallery), *outputs))
    assert res.exit_code == 0, res.stderr
    assert ("mAP / CMC: not computable: none of the 2 queries has its identity in the gallery "
            "(under another camera)") in res.stdout
    assert len(json.loads((tmp_path / "r.json").read_text())) == 2
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "s.npz").is_file()

    write_crops(queries, ["0007_c1s1_000070_00.jpg"], seed=6)  # 4 known + 1 unseen
    res = run(*base(fake_bundle, crop_folders, *outputs))
    assert res.exit_code == 0, res.stderr
    saved = np.load(tmp_path / "s.npz")
    known = [i for i, q in enumerate(saved["queries"]) if "0007_" not in q]
    pids = lambda paths: [int(Path(p).name[:4]) for p in paths]  # noqa: E731
    cams = lambda paths: [int(Path(p).name[6]) for p in paths]  # noqa: E731
    q = saved["queries"][known]
    m = evaluate_scores(saved["scores"][known], pids(q), pids(saved["gallery"]), cams(q),
                        cams(saved["gallery"]))
    assert (f"mAP {100 * m['mAP']:.1f}%" in res.stdout
            and "(4 of 5 queries scored; 1 without a match in the gallery skipped)" in res.stdout)
    assert len(json.loads((tmp_path / "r.json").read_text())) == 5


@pytest.mark.parametrize("option, value, words", [
    ("--scores", "nodir/s.npz", "nodir does not exist"),
    ("--out", "nodir/r.json", "nodir does not exist"),
    ("--report", "a_file.txt", "is not a folder"),
    ("--report", "a_file.txt/rep", "a_file.txt is not a folder"),
    ("--out", "a_folder.json", "is a folder; name a file"),
    ("--out", "/proc/x.json", "cannot write there"),
    ("--scores", "s.txt", "use a .npz file name"),
    ("--index", "a_file.txt", "not a folder"),
    ("--index", "/proc/idx", "cannot write the index there"),
])
def test_bad_output_paths_fail_before_any_work(fake_bundle, crop_folders, tmp_path, option,
                                              value, words, no_extraction):
    (tmp_path / "a_file.txt").write_text("keep me")
    (tmp_path / "a_folder.json").mkdir()
    path = value if value.startswith("/") else tmp_path / value
    res = run(*base(fake_bundle, crop_folders, option, path))
    line = one_error_line(res)
    assert res.exit_code == 2 and line.startswith("error: ") and words in line, line
    assert (tmp_path / "a_file.txt").read_text() == "keep me"


def test_decompression_bomb_in_the_gallery(fake_bundle, crop_folders, tmp_path):
    bomb = crop_folders[1] / "0003_c2s1_000777_00.png"
    bomb.write_bytes(png_header(30000, 30000))
    line = one_error_line(run(*base(fake_bundle, crop_folders)))
    assert line == (f"error: {bomb}: image too large (30000x30000 = 900,000,000 pixels; the "
                    f"limit is {DEFAULT_MAX_PIXELS:,}, see --max-pixels)")
    res = run(*base(fake_bundle, crop_folders, "--on-error", "skip", "--index", tmp_path / "i"))
    assert res.exit_code == 0 and f"{bomb}: image too large" in res.stderr


def test_max_pixels_option(fake_bundle, crop_folders):
    crop_pixels = 48 * 24  # the fixture's crops
    assert run(*base(fake_bundle, crop_folders, "--max-pixels", crop_pixels)).exit_code == 0
    line = one_error_line(run(*base(fake_bundle, crop_folders, "--max-pixels", crop_pixels - 1)))
    assert f"the limit is {crop_pixels - 1:,}" in line
    assert run(*base(fake_bundle, crop_folders, "--max-pixels", 0)).exit_code == 0
