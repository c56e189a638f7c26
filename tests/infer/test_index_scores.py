"""Scores through a gallery index (fp16 storage) equal the scores of the in-memory features
rounded to fp16, to fp32 accumulation accuracy: the index changes nothing but the rounding."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from tal_infer import ReIDEngine
from tal_infer.cli import main


def test_index_scores_are_those_of_fp16_rounded_gallery_features(fake_bundle, crop_folders,
                                                                  tmp_path):
    queries, gallery = crop_folders
    args = ["--gallery", gallery, "--queries", queries, "--model", fake_bundle, "--quiet",
            "--device", "cpu", "--backend", "onnxruntime", "--index", tmp_path / "idx",
            "--scores", tmp_path / "s.npz"]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr
    saved = np.load(tmp_path / "s.npz")

    engine = ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")  # the CLI's batch
    q = engine.embed_files(list(saved["queries"])).features
    g = engine.embed_files(list(saved["gallery"])).features
    rounded = engine.scores(q, {k: v.astype(np.float16).astype(np.float32) for k, v in g.items()})
    unrounded = engine.scores(q, g)
    tol = 1e-5 * (1 + float(np.abs(rounded).max()))
    np.testing.assert_allclose(saved["scores"], rounded, rtol=0, atol=tol)
    assert np.abs(unrounded - rounded).max() > 10 * tol  # the check sees the fp16 rounding
