"""Edges of the Python API and of tal-infer's output paths: wrong shapes and counts, bad
camera values, k out of range, outputs pointed into an input folder, long runtime errors.
Each is one clear TalError / `error:` line, and nothing is written where it does not belong."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import Gallery, ReIDEngine
from tal_infer.cli import main
from tal_infer.errors import TalError, brief

from runtime_fixtures import person_crop


@pytest.fixture(scope="module")
def engine(fake_bundle):
    return ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    return [person_crop(i % 3, rng) for i in range(6)]


def test_embed_takes_a_list_or_a_batch_array_not_one_crop(engine, crops):
    with pytest.raises(TalError, match=r"embed takes a list of crops .* got one array of "
                                       r"shape \(\d+, \d+, 3\): pass \[crop\]"):
        engine.embed(crops[0])
    same = np.stack([crops[0]] * 2)
    batch, listed = engine.embed(same), engine.embed([crops[0], crops[0]])
    for key in batch:
        np.testing.assert_array_equal(batch[key], listed[key])


@pytest.mark.parametrize("k", [0, -1])
def test_match_k_below_one_is_an_error(engine, crops, k):
    gallery = Gallery()
    gallery.add(engine.embed(crops))
    with pytest.raises(TalError, match=f"k .top matches per query. must be at least 1, got {k}"):
        engine.match(engine.embed(crops[:2]), gallery, k=k)


def test_query_cameras_errors_name_query_cameras(engine, crops):
    gallery = Gallery()
    gallery.add(engine.embed(crops), camera=[0, 1, 2, 0, 1, 2])
    queries = engine.embed(crops[:2])
    with pytest.raises(TalError, match="query_cameras: 3 values for 2 queries"):
        engine.match(queries, gallery, query_cameras=[0, 1, 2])
    with pytest.raises(TalError, match="query_cameras must be integers"):
        engine.match(queries, gallery, query_cameras=["x", 1])
    hits = engine.match(queries, gallery, k=6, query_cameras=1)  # one camera for all
    assert all(m.camera != 1 for row in hits for m in row)


@pytest.mark.parametrize("kwargs, words", [
    (dict(camera="x"), "camera must be a whole number >= 0 or None, not 'x'"),
    (dict(camera=1.5), "camera must be a whole number >= 0 or None, not 1.5"),
    (dict(camera=-2), "camera must be a whole number >= 0 or None, not -2"),
    (dict(timestamp=float("nan")), "timestamp must be a finite number or None, not nan"),
    (dict(timestamp="noon"), "timestamp must be a finite number or None, not 'noon'"),
    (dict(camera=[1, 2]), "Gallery.add: 2 camera values for 6 items"),
])
def test_gallery_add_refuses_bad_metadata_with_one_line(engine, crops, kwargs, words):
    gallery = Gallery()
    with pytest.raises(TalError, match="Gallery.add: ") as err:
        gallery.add(engine.embed(crops), **kwargs)
    assert words in str(err.value)
    assert len(gallery) == 0


def test_long_runtime_errors_are_cut_at_a_word():
    err = RuntimeError("word " * 200 + "\nsecond line")
    line = brief(err, limit=50)
    assert line.endswith(" ...") and len(line) <= 54
    assert set(line[:-4].split(" ")) == {"word"}  # whole words only
    assert brief(RuntimeError("short\nmore")) == "short"


def _infer(fake_bundle, queries, gallery, *extra):
    return CliRunner().invoke(main, [str(a) for a in (
        "--gallery", gallery, "--queries", queries, "--model", fake_bundle, "--device", "cpu",
        *extra)])


@pytest.mark.parametrize("option, where", [
    ("--out", "bundle/manifest.json"), ("--out", "gallery/ranks.json"),
    ("--scores", "query/s.npz"), ("--report", "gallery/report"), ("--report", "bundle"),
    ("--index", "gallery/g.index")])
def test_outputs_inside_an_input_folder_are_refused_before_any_work(
        fake_bundle, crop_folders, tmp_path, monkeypatch, option, where):
    queries, gallery = crop_folders
    bundle = shutil.copytree(fake_bundle, tmp_path / "bundle")
    manifest = (bundle / "manifest.json").read_bytes()
    folders = {"bundle": bundle, "gallery": gallery, "query": queries}
    first, _, rest = where.partition("/")
    target = folders[first] / rest if rest else folders[first]

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started before the output path was refused")
    monkeypatch.setattr(ReIDEngine, "embed_files", no_extraction)
    before = sorted(p.name for p in gallery.iterdir())
    res = _infer(bundle, queries, gallery, option, target)
    assert res.exit_code == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lies inside the" in lines[0] and option in lines[0]
    assert (bundle / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in gallery.iterdir()) == before
