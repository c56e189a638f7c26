"""Scores through a gallery index equal the scores of the in-memory features, for an fp32 and
an fp16 bundle alike: the index stores features in the bundle's precision (fp32 bundles fp32,
fp16 bundles fp16), so it changes nothing but where the features live."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import ReIDEngine
from tal_infer.cli import main


@pytest.mark.parametrize("bundle_fixture, dtype, suffix", [
    ("fake_bundle", np.float32, ".f32"), ("fake_bundle_fp16", np.float16, ".f16")])
def test_index_scores_equal_in_memory_scores_in_the_bundles_precision(
        request, crop_folders, tmp_path, bundle_fixture, dtype, suffix):
    bundle = request.getfixturevalue(bundle_fixture)
    queries, gallery = crop_folders
    args = ["--gallery", gallery, "--queries", queries, "--model", bundle,
            "--device", "cpu", "--backend", "onnxruntime", "--index", tmp_path / "idx",
            "--scores", tmp_path / "s.npz"]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr
    saved = np.load(tmp_path / "s.npz")
    files = sorted((tmp_path / "idx").glob("features-*/*.f*"))
    assert files and {f.suffix for f in files} == {suffix}

    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu")  # the CLI's batch
    q = engine.embed_files(list(saved["queries"])).features
    g = engine.embed_files(list(saved["gallery"])).features
    assert {v.dtype for v in (*q.values(), *g.values())} == {np.dtype(dtype)}
    want = engine.scores(q, g)
    # The same feature values on both sides; only the gallery chunks may differ (fp32 sums).
    np.testing.assert_allclose(saved["scores"], want, rtol=0,
                               atol=1e-6 * (1 + float(np.abs(want).max())))
