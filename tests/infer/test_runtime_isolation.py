"""The runtime on a machine without torch or the training code: a fresh interpreter where
torch, tal_train and tal_export cannot be imported extracts and matches through ONNX Runtime
and the numpy matching path, with the same scores as a normal process."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from runtime_fixtures import isolated_cli
from tal_infer import ReIDEngine

SCRIPT = isolated_cli("tal_infer.cli")


def _isolated_scores(bundle, folders, out):
    queries, gallery = folders
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", SCRIPT,
                          "--gallery", str(gallery), "--queries", str(queries), "--model",
                          str(bundle), "--scores", str(out), "--report",
                          str(out.parent / "report")], capture_output=True, text=True)
    assert res.returncode == 0 and "isolated run ok" in res.stdout, res.stderr[-3000:]
    assert "CPUExecutionProvider" in res.stderr
    return np.load(out)


def _check(bundle, folders, tmp_path):
    saved = _isolated_scores(bundle, folders, tmp_path / "s.npz")
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu")
    want = engine.scores(engine.embed_files(list(saved["queries"])).features,
                         engine.embed_files(list(saved["gallery"])).features)
    np.testing.assert_allclose(saved["scores"], want, rtol=0, atol=1e-5 * (1 + abs(want).max()))


def test_without_torch_on_a_contract_bundle(fake_bundle, crop_folders, tmp_path):
    _check(fake_bundle, crop_folders, tmp_path)


def test_without_torch_on_an_exported_bundle(exported, crop_folders, tmp_path):
    _check(exported[1], crop_folders, tmp_path)
