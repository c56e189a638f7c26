"""A bundle is untrusted data (issue 11, items 1, 2 and the bundle half of 8): no path it names
leads outside its folder, no planted code runs whatever the backend, and every bad field is
one `error:` line with exit code 2, found when the bundle is opened, before any extraction."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import ReIDEngine, backends
from tal_infer import bundle as bundle_module
from tal_infer.bundle import load_bundle
from tal_infer.cli import main
from tal_infer.errors import BundleError, TalError, UnsafeBundleError

from runtime_fixtures import write_fake_bundle


def _edit(folder: Path, change) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _infer(bundle: Path, folders, *extra, monkeypatch=None) -> str:
    """tal-infer on ``bundle``; returns the single stderr line after checking the exit code
    (2), that nothing else was printed, and (with monkeypatch) that no image was read."""
    if monkeypatch is not None:
        def no_extraction(*args, **kwargs):
            raise AssertionError("extraction started before the bundle was refused")
        monkeypatch.setattr(ReIDEngine, "embed_files", no_extraction)
    queries, gallery = folders
    result = CliRunner().invoke(main, ["--gallery", str(gallery), "--queries", str(queries),
                                       "--model", str(bundle), "--quiet", *map(str, extra)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture()
def outside(tmp_path) -> Path:
    """A file outside every bundle, with a size no test expects to see."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("s" * 4321)
    return secret


@pytest.mark.parametrize("key", ["../outside/secret.txt", "{outside}", "sub/../../outside/x",
                                 "link.txt"])
def test_manifest_file_names_outside_the_bundle_are_refused(
        fake_bundle, crop_folders, tmp_path, outside, monkeypatch, key):
    folder = shutil.copytree(fake_bundle, tmp_path / "bundle")
    os.symlink(outside, folder / "link.txt")
    key = key.format(outside=outside)
    _edit(folder, lambda m: m["files"].update({key: {"sha256": "0" * 64, "bytes": 1}}))
    hashed = []
    monkeypatch.setattr(bundle_module, "file_sha256", lambda p: hashed.append(p) or "0" * 64)
    for verify in (False, True):
        with pytest.raises(BundleError) as err:
            load_bundle(folder, verify=verify)
        assert f"files key {key!r}" in str(err.value) and "refusing the bundle" in str(err.value)
    line = _infer(folder, crop_folders, "--verify", monkeypatch=monkeypatch)
    assert repr(key) in line and "4321" not in line
    assert hashed == []  # nothing was hashed, inside or out


def test_bundle_files_that_are_symlinks_out_are_refused(fake_bundle, tmp_path, outside):
    folder = shutil.copytree(fake_bundle, tmp_path / "bundle")
    (folder / "extractor.onnx").unlink()
    os.symlink(outside, folder / "extractor.onnx")
    with pytest.raises(BundleError, match=r"'extractor.onnx' resolves outside the bundle"):
        load_bundle(folder)
    inside = shutil.copytree(fake_bundle, tmp_path / "inside")  # a link within is fine
    (inside / "sub").mkdir()
    (inside / "heads.npz").rename(inside / "sub" / "heads.npz")
    os.symlink(inside / "sub" / "heads.npz", inside / "heads.npz")
    assert "ds/affine" in load_bundle(inside, verify=True).heads


def _height_zero(m):
    m["input"]["height"] = 0


def _files_as_list(m):
    m["files"] = sorted(m["files"])


def _hw_disagrees(m):
    m["features"]["di_res4"]["hw"] = [2, 8]


def _input_as_list(m):
    m["input"] = [32, 16]


@pytest.mark.parametrize("change, words", [
    (_height_zero, "input.height must be a positive integer, not 0"),
    (_files_as_list, "'files' must map file names"),
    (_hw_disagrees, "features.di_res4.hw [2, 8] is not the shape's h, w [4, 2]"),
    (_input_as_list, "'input' must be an object"),
])
def test_bad_manifest_fields_are_one_line(fake_bundle, crop_folders, tmp_path, monkeypatch,
                                          change, words):
    folder = _edit(shutil.copytree(fake_bundle, tmp_path / "bundle"), change)
    line = _infer(folder, crop_folders, "--verify", monkeypatch=monkeypatch)
    assert "manifest.json: malformed manifest" in line and words in line


def test_truncated_heads_are_found_when_the_bundle_opens(fake_bundle, crop_folders, tmp_path,
                                                         monkeypatch):
    folder = shutil.copytree(fake_bundle, tmp_path / "bundle")
    heads = folder / "heads.npz"
    heads.write_bytes(heads.read_bytes()[:len(heads.read_bytes()) // 2])
    line = _infer(folder, crop_folders, monkeypatch=monkeypatch)
    assert "heads.npz: not a readable npz file, damaged or truncated" in line


def test_feature_shape_that_disagrees_with_the_onnx_graph(fake_bundle, crop_folders, tmp_path,
                                                          monkeypatch):
    def wider(m):
        m["features"]["ds_res4"]["shape"][2] = 16
    folder = _edit(shutil.copytree(fake_bundle, tmp_path / "bundle"), wider)
    line = _infer(folder, crop_folders, "--backend", "onnxruntime", monkeypatch=monkeypatch)
    assert "feature ds_res4 has shape [-1, 2, 16, 4, 2], but extractor.onnx gives " \
           "[N, 2, 8, 4, 2]" in line


# --- the exported bundle and its extractor.pt2 (the `exported` fixture needs torch) ----------

def _planted_bundle(exported, tmp_path: Path, marker: Path, plant="pickled weight") -> Path:
    """A copy of the exported bundle whose extractor.pt2 carries a payload, with the manifest
    hash updated too (an attacker who can edit the folder can edit the manifest)."""
    from planted_archives import planted

    folder = shutil.copytree(exported[1], tmp_path / "bundle")
    pt2 = folder / "extractor.pt2"
    planted(exported[1] / "extractor.pt2", pt2, plant, marker)
    digest = hashlib.sha256(pt2.read_bytes()).hexdigest()
    return _edit(folder, lambda m: m["files"]["extractor.pt2"].update(
        sha256=digest, bytes=pt2.stat().st_size))


@pytest.mark.parametrize("plant", ["pickled weight", "pickled sample inputs"])
def test_torch_backend_refuses_a_planted_program(exported, crop_folders, tmp_path, monkeypatch,
                                                 plant):
    marker = tmp_path / "ran"
    folder = _planted_bundle(exported, tmp_path, marker, plant)
    line = _infer(folder, crop_folders, "--backend", "torch", "--verify",
                  monkeypatch=monkeypatch)
    assert "extractor.pt2: " in line and ("pickle" in line)
    assert not marker.exists()


def test_auto_on_cuda_refuses_rather_than_falls_back(exported, tmp_path, monkeypatch):
    """auto on a GPU reaches the torch backend when there is no engine: an unsafe program
    refuses the bundle instead of being skipped for the next backend."""
    marker = tmp_path / "ran"
    bundle = load_bundle(_planted_bundle(exported, tmp_path, marker), verify=True)
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    with pytest.raises(UnsafeBundleError, match="stored as a pickle"):
        backends.open_extractor(bundle, "auto", "cuda")
    assert not marker.exists()
    monkeypatch.undo()
    extractor = backends.open_extractor(bundle, "auto", "cpu")  # ONNX Runtime: never reads it
    assert extractor.name.startswith("onnxruntime") and not marker.exists()


def test_torch_backend_checks_the_program_against_the_manifest(exported, crop_folders, tmp_path,
                                                               monkeypatch):
    def wider(m):
        m["features"]["di_res5"]["shape"][1] += 1
    folder = _edit(shutil.copytree(exported[1], tmp_path / "bundle"), wider)
    line = _infer(folder, crop_folders, "--backend", "torch", monkeypatch=monkeypatch)
    assert "feature di_res5 has shape" in line and "but extractor.pt2 gives [N, " in line


def test_torch_backend_equals_onnxruntime_on_fresh_images(exported):
    bundle = load_bundle(exported[1])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, bundle.height, bundle.width, 3), dtype="uint8")
    got = backends.open_extractor(bundle, "torch", "cpu")(images)
    want = backends.open_extractor(bundle, "onnxruntime", "cpu")(images)
    assert set(got) == set(want) == set(bundle.features)
    for name in want:  # fp32 both ways; differences are summation order only
        assert abs(got[name] - want[name]).max() < 1e-4, name


def test_torch_backend_needs_extractor_pt2(tmp_path):
    bundle = load_bundle(write_fake_bundle(tmp_path / "b"), verify=True)
    with pytest.raises(TalError, match="extractor.pt2 is not in the bundle"):
        backends.open_extractor(bundle, "torch", "cpu")
