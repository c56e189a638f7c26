"""Bundle reading: a conforming bundle loads; another format version, a damaged file or a
malformed manifest is refused with one line naming the file; the latest bundle is found."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tal_infer.bundle import find_latest_bundle, load_bundle
from tal_infer.errors import BundleError

from runtime_fixtures import write_fake_bundle


def test_conforming_bundle_loads_with_match_layout_shapes(fake_bundle):
    bundle = load_bundle(fake_bundle, verify=True)
    assert (bundle.height, bundle.width) == (32, 16)
    assert bundle.features["ds_res4"].match_shape == (2, 8, 8)
    assert bundle.features["di_res5"].match_shape == (2, 8)
    assert set(bundle.heads) >= {"ds/res4/wq", "di/affine"}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, words", [
    (dict(format_version=4), "format version 4 is not supported"),
    (dict(descriptor={"shape": [-1, 8]}), "descriptor section needs format version 2"),
    (dict(format_version=2, descriptor={"shape": [8]}), "descriptor.shape must be"),
    (dict(format="something-else"), "not a tal-reid-bundle manifest"),
    (dict(features={"ds_res4": {"shape": [-1, 8]}}), r"features.ds_res4.shape must be \[-1, K, C"),
    (dict(input={"height": 32}), "input.width must be an integer in 8..4096, not None"),
])
def test_incompatible_manifest_is_refused(fake_bundle, tmp_path, changes, words):
    folder = _copy(fake_bundle, tmp_path / "b")
    _edit_manifest(folder, **changes)
    with pytest.raises(BundleError, match=words) as err:
        load_bundle(folder)
    assert "manifest.json" in str(err.value) and "\n" not in str(err.value)


def test_not_json_and_missing_files_are_named(fake_bundle, tmp_path):
    folder = _copy(fake_bundle, tmp_path / "b")
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not a readable manifest"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="folder not found"):
        load_bundle(tmp_path / "nope")


def test_verify_names_the_modified_file(fake_bundle, tmp_path):
    folder = _copy(fake_bundle, tmp_path / "b")
    load_bundle(folder, verify=True)
    data = bytearray((folder / "extractor.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "extractor.onnx").write_bytes(bytes(data))
    load_bundle(folder)  # hashes are checked on request only
    with pytest.raises(BundleError, match="extractor.onnx: SHA-256 differs"):
        load_bundle(folder, verify=True)


def test_latest_bundle_and_fingerprint(tmp_path):
    with pytest.raises(BundleError, match="no model bundle found"):
        find_latest_bundle(tmp_path / "export")
    old = write_fake_bundle(tmp_path / "export" / "old", seed=1)
    new = write_fake_bundle(tmp_path / "export" / "new", seed=2)
    os.utime(old / "manifest.json", (1, 1))
    assert find_latest_bundle(tmp_path / "export") == new
    assert find_latest_bundle(new) == new
    assert load_bundle(old).fingerprint != load_bundle(new).fingerprint
    assert load_bundle(new).fingerprint == load_bundle(new).fingerprint
