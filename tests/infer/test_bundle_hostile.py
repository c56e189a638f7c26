"""Hostile or damaged bundles, round 2: special files, a heads.npz bomb, manifest values far out
of bounds, ONNX external data pointing outside, NaN heads, and the index fingerprint covering
every file that shapes features. Each case is one `error:` line (or BundleError) when the
bundle opens, without hanging, without reading outside the bundle and in bounded memory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tal_infer import ReIDEngine
from tal_infer.bundle import load_bundle
from tal_infer.engine import bundle_index
from tal_infer.errors import BundleError
from tal_infer.index import IndexMismatchError

from runtime_fixtures import write_fake_bundle

TIMEOUT = 60  # seconds: every refusal here is immediate; a hang fails the test


def _copy(fake_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(fake_bundle, tmp_path / "bundle"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _opened(folder: Path, **kwargs) -> ReIDEngine:
    return ReIDEngine(folder, backend="onnxruntime", device="cpu", **kwargs)


@pytest.mark.parametrize("name", ["manifest.json", "heads.npz", "extractor.onnx"])
def test_bundle_files_that_are_fifos_are_refused_without_hanging(fake_bundle, tmp_path, name):
    folder = _copy(fake_bundle, tmp_path)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    script = ("import sys; from tal_infer import ReIDEngine\n"
              "from tal_infer.errors import BundleError\n"
              "try:\n    ReIDEngine(sys.argv[1], backend='onnxruntime', device='cpu')\n"
              "except BundleError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert f"{name}: is a named pipe (FIFO); only regular files are read" in out.stdout, \
        out.stderr


def _deflated_bomb(path: Path, arrays: dict[str, np.ndarray], entry: str, size: int) -> None:
    """heads.npz with the real arrays plus ``entry`` declaring a float32 array of ``size``
    bytes, deflated (a megabyte of zeros on disk per gigabyte)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, value)
        with zf.open(f"{entry}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (size // 4,)})
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)


OPEN_AND_MEASURE = """
import resource, sys
from tal_infer import ReIDEngine
from tal_infer.errors import BundleError
try:
    ReIDEngine(sys.argv[1], backend='onnxruntime', device='cpu', matcher='numpy')
    print('opened')
except BundleError as err:
    print(err)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _open_and_measure(folder: Path) -> tuple[str, int]:
    """(outcome line, peak RSS in MiB) of opening ``folder`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", OPEN_AND_MEASURE, str(folder)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    message, peak_mib = out.stdout.strip().splitlines()
    return message, int(peak_mib)


@pytest.mark.parametrize("entry", ["unused/array", "ds/res4/wq"])
def test_heads_bomb_reads_only_what_the_manifest_names_in_bounded_memory(fake_bundle, tmp_path,
                                                                        entry):
    """A 512 MiB deflated entry (half a megabyte on disk): unused, it is never inflated; in
    place of a real array, its declared shape is refused from the .npy header. Peak RSS of the
    whole open (a fresh process) stays within 64 MiB of opening the untouched bundle."""
    _, baseline = _open_and_measure(fake_bundle)
    folder = _copy(fake_bundle, tmp_path)
    with np.load(folder / "heads.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != entry}
    _deflated_bomb(folder / "heads.npz", arrays, entry, 1 << 29)
    assert (folder / "heads.npz").stat().st_size < 8 << 20
    message, peak = _open_and_measure(folder)
    if entry == "unused/array":
        assert message == "opened"
    else:
        assert "heads.npz: array 'ds/res4/wq' is float32 [134217728], the manifest needs " \
               "float [2x8xP]" in message
    assert peak < baseline + 64, (peak, baseline)  # the entry alone is 512 MiB


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_heads_are_refused_when_the_bundle_opens(fake_bundle, tmp_path, value):
    folder = _copy(fake_bundle, tmp_path)
    with np.load(folder / "heads.npz") as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["di/res5/wg"][1, 0] = value
    np.savez(folder / "heads.npz", **arrays)
    with pytest.raises(BundleError, match=r"heads.npz: array 'di/res5/wg' holds NaN or "
                                          r"infinite values; the bundle is damaged"):
        _opened(folder)


def _set(path: list, value):
    def change(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize("change, words", [
    (_set(["input", "height"], 10 ** 6), "input.height must be an integer in 8..4096, not "
                                         "1000000"),
    (_set(["input", "height"], 64), "input is 64x16, but extractor.onnx takes [N, 32, 16, 3]"),
    (_set(["features", "di_res4", "shape", 1], 10 ** 400), "features.di_res4.shape must be an "
                                                          "integer in 1..4096"),
    (_set(["input", "mean"], [0.5, float("inf"), 0.5]), "input.mean must be 3 finite numbers"),
    (_set(["run_name"], {"a": 1}), "run_name must be a short text"),
    (_set(["matching", "streams", "ds", "mode"], "exec"), "matching.streams.ds.mode must be one "
                                                          "of ms, attention, mean"),
    (_set(["domains"], [[[[[[[[]]]]]]]]), "domains must be an object"),
])
def test_manifest_values_out_of_bounds_are_refused_when_the_bundle_opens(
        fake_bundle, tmp_path, change, words):
    folder = _copy(fake_bundle, tmp_path)
    manifest = _manifest(folder)
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json: ") as err:
        _opened(folder)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "not a readable manifest (nested too deep)"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nested more than 32 levels deep"),
    ('{"format": "tal-reid-bundle", "format_version": 1' + "0" * 5000 + "}",
     "not a readable manifest"),
])
def test_pathological_manifest_json_is_one_line(fake_bundle, tmp_path, text, words):
    folder = _copy(fake_bundle, tmp_path)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="manifest.json") as err:
        load_bundle(folder)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_oversized_manifest_is_refused_unread(fake_bundle, tmp_path):
    folder = _copy(fake_bundle, tmp_path)
    with open(folder / "manifest.json", "ab") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros after the JSON
    with pytest.raises(BundleError, match="over the 4,194,304-byte limit"):
        load_bundle(folder)


def _graph_with_external_data(source: Path, target: Path, location: str) -> None:
    """extractor.onnx whose first initializer keeps its data in ``location``."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(source))
    tensor = model.graph.initializer[0]
    set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data) or 4)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    target.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("location", ["../../outside/secret.bin", "weights.bin",
                                      "/etc/passwd"])
def test_onnx_external_data_is_refused_before_any_runtime_sees_the_graph(
        fake_bundle, tmp_path, monkeypatch, location):
    folder = _copy(fake_bundle, tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(bytes(4096))
    (folder / "weights.bin").write_bytes(bytes(4096))
    _graph_with_external_data(fake_bundle / "extractor.onnx", folder / "extractor.onnx",
                              location)
    import onnxruntime

    def never(*args, **kwargs):
        raise AssertionError("ONNX Runtime was given a graph with external data")
    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    with pytest.raises(BundleError, match="extractor.onnx: a tensor keeps its data in an "
                                          "external file"):
        _opened(folder)


def test_onnx_scan_finds_external_data_in_subgraphs_and_constants():
    """The scan walks nested graphs (If branches) and Constant nodes, not only initializers."""
    import onnx
    from onnx import TensorProto, helper

    from tal_infer.onnx_scan import OnnxScanError, check_no_external_data

    tensor = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../x.bin"
    constant = helper.make_node("Constant", [], ["y"], value=tensor)
    branch = helper.make_graph([constant], "b", [], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "cond", TensorProto.BOOL, [])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1])])
    with pytest.raises(OnnxScanError, match="external file"):
        check_no_external_data(helper.make_model(graph).SerializeToString())
    clean = onnx.helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])]))
    check_no_external_data(clean.SerializeToString())
    with pytest.raises(OnnxScanError, match="truncated"):
        check_no_external_data(clean.SerializeToString()[:-3])


def test_fingerprint_covers_every_file_that_shapes_features(fake_bundle, tmp_path):
    """Replacing the torch backend's weights (or adding a TensorRT plan) makes an index built
    with the old bundle refuse the new one, as replacing extractor.onnx always did."""
    folder = _copy(fake_bundle, tmp_path)
    before = load_bundle(folder).fingerprint
    index = bundle_index(load_bundle(folder), tmp_path / "index")
    (folder / "extractor.safetensors").write_bytes(b"weights v1")
    with_weights = load_bundle(folder).fingerprint
    (folder / "extractor.safetensors").write_bytes(b"weights v2")
    other_weights = load_bundle(folder).fingerprint
    (folder / "extractor.plan").write_bytes(b"plan")
    with_plan = load_bundle(folder).fingerprint
    assert len({before, with_weights, other_weights, with_plan}) == 4
    assert index.fingerprint == before
    with pytest.raises(IndexMismatchError):
        bundle_index(load_bundle(folder), tmp_path / "index")
    assert load_bundle(write_fake_bundle(tmp_path / "again")).fingerprint.split(":")[1] == \
        before.split(":")[1]  # bundles without those files keep their fingerprint
