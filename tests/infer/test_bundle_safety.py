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
from tal_infer.errors import BundleError, TalError

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
                                       "--model", str(bundle), *map(str, extra)])
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
    (_height_zero, "input.height must be an integer in 8..4096, not 0"),
    (_files_as_list, "files must be an object, not list"),
    (_hw_disagrees, "features.di_res4.hw [2, 8] is not the shape's h, w [4, 2]"),
    (_input_as_list, "input must be an object, not list"),
])
def test_bad_manifest_fields_are_one_line(fake_bundle, crop_folders, tmp_path, monkeypatch,
                                          change, words):
    folder = _edit(shutil.copytree(fake_bundle, tmp_path / "bundle"), change)
    line = _infer(folder, crop_folders, "--verify", monkeypatch=monkeypatch)
    assert "manifest.json: " in line and words in line


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


# --- the exported bundle and its extractor.safetensors (the `exported` fixture needs torch) ---

def _with_weights(exported, tmp_path: Path, write) -> Path:
    """A copy of the exported bundle whose extractor.safetensors ``write(path)`` replaced, with
    the manifest hash updated too (an attacker who can edit the folder can edit the
    manifest)."""
    folder = shutil.copytree(exported[1], tmp_path / "bundle")
    weights = folder / "extractor.safetensors"
    weights.unlink()
    write(weights)
    if weights.is_file():
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        _edit(folder, lambda m: m["files"]["extractor.safetensors"].update(
            sha256=digest, bytes=weights.stat().st_size))
    return folder


def _state(exported):
    from safetensors.torch import load_file

    return load_file(str(exported[1] / "extractor.safetensors"))


def _pickle_with_payload(marker: Path):
    """torch.save of an object whose unpickling creates ``marker``: what a .pth/.pt2 weight
    file can carry."""
    import torch

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return lambda path: torch.save({"weight": Payload()}, path)


def _wrong_shape(exported):
    from safetensors.torch import save_file

    state = _state(exported)
    name = next(k for k, v in state.items() if v.dim() == 4)
    state[name] = state[name][:, :1].contiguous()
    return lambda path: save_file(state, str(path))


def _nan_weight(exported):
    from safetensors.torch import save_file

    state = _state(exported)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state[name][0, 0, 0, 0] = float("nan")
    return lambda path: save_file(state, str(path))


def _huge_header(path: Path):
    """A safetensors header that declares a 2^40-element tensor over 8 bytes of data."""
    header = json.dumps({"x": {"dtype": "F32", "shape": [2 ** 40], "data_offsets": [0, 8]}})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 8)


@pytest.mark.parametrize("plant, words", [
    ("pickle", "not a readable safetensors file"),
    ("wrong shape", "the model needs F32"),
    ("nan", "holds NaN or infinite values"),
    ("huge header", "not a readable safetensors file"),
    ("fifo", "is a named pipe (FIFO); only regular files are read"),
])
def test_torch_backend_refuses_planted_or_damaged_weights(exported, crop_folders, tmp_path,
                                                          monkeypatch, plant, words):
    marker = tmp_path / "ran"
    write = {"pickle": _pickle_with_payload(marker), "wrong shape": _wrong_shape(exported),
             "nan": _nan_weight(exported), "huge header": _huge_header,
             "fifo": lambda path: os.mkfifo(path)}[plant]
    folder = _with_weights(exported, tmp_path, write)
    line = _infer(folder, crop_folders, "--backend", "torch", monkeypatch=monkeypatch)
    assert "extractor.safetensors: " in line and words in line
    assert not marker.exists()


def test_auto_on_cuda_refuses_a_damaged_bundle_rather_than_falls_back(exported, tmp_path,
                                                                      monkeypatch):
    """auto on a GPU reaches the torch backend when there is no engine: damaged weights
    refuse the bundle instead of being skipped for the next backend; on the CPU auto uses
    ONNX Runtime, which never reads them."""
    bundle = load_bundle(_with_weights(exported, tmp_path, _nan_weight(exported)), verify=True)
    with pytest.raises(BundleError, match="holds NaN"):
        backends._OPENERS["torch"](bundle, "cpu")
    monkeypatch.setattr(backends, "resolve_device", lambda device: device)
    monkeypatch.setattr(backends, "CUDA_AUTO_ORDER", ("torch", "onnxruntime"))
    with pytest.raises(BundleError, match="holds NaN"):
        backends.open_extractor(bundle, "auto", "cuda")
    monkeypatch.undo()
    extractor = backends.open_extractor(bundle, "auto", "cpu")
    assert extractor.name.startswith("onnxruntime")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["features"]["di_res5"]["shape"].__setitem__(1, 48), "model_config gives "
     "feature maps"),
    (lambda m: m["model_config"].update(neck_channels=10 ** 6), "model_config gives feature "
     "maps"),
    (lambda m: m["model_config"].update(backbone="no-such-net"), "is not a valid model config"),
    (lambda m: m["model_config"].update(image_size=[4096, 4096]), "differs from the input"),
    (lambda m: m.pop("model_config"), "model_config is missing"),
])
def test_torch_backend_checks_the_config_against_the_manifest(exported, crop_folders,
                                                              tmp_path, monkeypatch, edit, words):
    folder = _edit(shutil.copytree(exported[1], tmp_path / "bundle"), edit)
    line = _infer(folder, crop_folders, "--backend", "torch", monkeypatch=monkeypatch)
    assert "manifest.json" in line and words in line


def test_torch_backend_equals_onnxruntime_on_fresh_images(exported):
    bundle = load_bundle(exported[1])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, bundle.height, bundle.width, 3), dtype="uint8")
    got = backends.open_extractor(bundle, "torch", "cpu")(images)
    want = backends.open_extractor(bundle, "onnxruntime", "cpu")(images)
    assert set(got) == set(want) == set(bundle.features)
    for name in want:  # fp32 both ways; differences are summation order only
        assert abs(got[name] - want[name]).max() < 1e-4, name


def test_torch_backend_places_every_tensor_on_its_device(exported):
    """On the meta device (no memory, no arithmetic): every weight and buffer is created on
    the device the backend runs on, and a batch goes through with the manifest's shapes."""
    import torch

    bundle = load_bundle(exported[1])
    extractor = backends.open_extractor(bundle, "torch", "cpu")
    meta = type(extractor)(bundle, "meta")
    tensors = list(meta.network.parameters()) + list(meta.network.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)
    out = meta.network(torch.zeros(2, bundle.height, bundle.width, 3, dtype=torch.uint8,
                                   device="meta"))
    assert [tuple(o.shape[1:]) for o in out] == [f.shape for f in bundle.features.values()]


def test_torch_backend_needs_the_weights_file(tmp_path):
    bundle = load_bundle(write_fake_bundle(tmp_path / "b"), verify=True)
    with pytest.raises(TalError, match="extractor.safetensors is not in the bundle .* re-export"):
        backends.open_extractor(bundle, "torch", "cpu")
