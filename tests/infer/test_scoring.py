"""Projection-form matching from heads.npz: equals the PyTorch model's `match` and a plain
einsum reference; chunking, streaming top-k and camera exclusion change nothing else."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tal_infer.bundle import load_bundle
from tal_infer.features import feature_chunks, match_layout
from tal_infer.scoring import Scorer, TopK, exclude_same_camera, rank_gallery
from tal_plugins import qaconv_match_reference_numpy

from runtime_fixtures import random_features


def _tolerance(expected: np.ndarray, rel: float = 1e-4) -> float:
    return rel * (1 + float(np.abs(expected).max()))


def _reference_scores(bundle, q, g) -> np.ndarray:
    """docs/bundle.md formulas written out with the einsum reference (float64 softmax)."""
    heads, total = bundle.heads, 0.0
    for stream in bundle.matching.score:
        mode, z = bundle.matching.modes[stream], 0.0
        for scale in bundle.matching.scales:
            qs, gs = q[f"{stream}_{scale}"], g[f"{stream}_{scale}"]
            wq, wg = heads[f"{stream}/{scale}/wq"], heads[f"{stream}/{scale}/wg"]
            if mode == "ms":
                z = z + qaconv_match_reference_numpy(qs, gs, wq, wg)[..., 0]
                continue
            r = np.stack([qaconv_match_reference_numpy(qs[:, i], gs[:, i], wq[i], wg[i])
                          for i in range(qs.shape[1])], axis=-1).astype(np.float64)
            if mode == "mean":
                z = z + r[:, :, 0].mean(-1)
                continue
            hidden = np.maximum(r[:, :, 1:].sum(-1) + heads[f"{stream}/{scale}/b1"], 0)
            logits = hidden @ heads[f"{stream}/{scale}/w2"].T + heads[f"{stream}/{scale}/b2"]
            alpha = np.exp(logits - logits.max(-1, keepdims=True))
            alpha /= alpha.sum(-1, keepdims=True)
            z = z + (alpha * r[:, :, 0]).sum(-1)
        a, b = heads[f"{stream}/affine"]
        total = total + a * z + b
    return total


def test_scores_equal_einsum_reference_on_fresh_features(fake_bundle):
    bundle = load_bundle(fake_bundle)
    rng = np.random.default_rng(1)
    q, g = random_features(bundle, 5, rng), random_features(bundle, 9, rng)
    got = Scorer(bundle).scores(q, g)
    want = _reference_scores(bundle, q, g)
    assert got.shape == (5, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want, 1e-5))


def test_chunked_streaming_topk_equals_full_sort(fake_bundle):
    bundle = load_bundle(fake_bundle)
    rng = np.random.default_rng(2)
    q, g = random_features(bundle, 4, rng), random_features(bundle, 23, rng)
    scorer = Scorer(bundle)
    full = scorer.scores(q, g)
    q_cams, g_cams = rng.integers(0, 3, 4), rng.integers(-1, 3, 23)
    ranking = rank_gallery(scorer, q, feature_chunks(g, 5), 23, k=6, cameras=(q_cams, g_cams),
                           keep_scores=True)
    np.testing.assert_allclose(ranking.scores, full, rtol=0, atol=1e-5)
    masked = full.copy()
    exclude_same_camera(masked, q_cams, g_cams)
    for row, got in zip(masked, ranking.topk.rows()):
        order = np.argsort(-row, kind="stable")[:6]
        want = [(int(c), float(row[c])) for c in order if np.isfinite(row[c])]
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    for qi, row in enumerate(ranking.topk.rows()):  # unknown camera (-1) is never excluded
        assert all(g_cams[c] != q_cams[qi] for c, _ in row)


def test_topk_ties_keep_lower_column_first():
    top = TopK(1, 3)
    top.update(0, np.array([[1.0, 2.0, 2.0]], np.float32))
    top.update(3, np.array([[2.0, 2.5]], np.float32))
    assert top.rows() == [[(4, 2.5), (1, 2.0), (2, 2.0)]]


def _bundle_from_model(model, folder: Path):
    """Manifest + heads.npz of a TAL model (projection_form), without any graph: scoring only."""
    from tal_infer.bundle import Bundle
    from tal_infer.bundle_schema import Manifest

    form = model.projection_form()
    folder.mkdir()
    np.savez(folder / "heads.npz", **form["arrays"])
    k, c = model.config.num_domains, model.config.neck_channels
    features = {}
    for stream in model.config.streams:
        for scale, (h, w) in model.config.scale_sizes().items():
            shape = [-1, k, c, h, w] if stream == "ds" else [-1, c, h, w]
            features[f"{stream}_{scale}"] = {"shape": shape}
    height, width = model.config.image_size
    raw = {"format": "tal-reid-bundle", "format_version": 3, "features": features,
           "input": {"height": height, "width": width},
           "matching": json.loads(json.dumps(form["matching"]))}
    return Bundle(folder, Manifest.from_json(raw), raw)


@pytest.mark.parametrize("overrides", [dict(), dict(ds_head="avg"), dict(ds_head="vote"),
                                       dict(streams=("di",)), dict(streams=("ds",))],
                         ids=["msda+di", "avg+di", "vote+di", "di-only", "ds-only"])
def test_scores_equal_pytorch_model_match(tmp_path, overrides):
    torch = pytest.importorskip("torch")
    from tal_train.models import TALConfig, build_model

    torch.manual_seed(np.random.SeedSequence().entropy % 2 ** 31)
    config = TALConfig.preset("tiny", domains=("a", "b", "c"), image_size=(64, 32), **overrides)
    model = build_model(config).eval()
    with torch.no_grad():  # non-trivial heads: random affine and BN statistics
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    q_img, g_img = torch.randn(3, 3, 64, 32), torch.randn(7, 3, 64, 32)
    qf, gf = model.extract(q_img), model.extract(g_img)
    want = model.match(qf, gf).numpy()
    bundle = _bundle_from_model(model, tmp_path / "b")
    to_np = lambda f: {k: match_layout(v.numpy()) for k, v in f.items()}  # noqa: E731
    got = Scorer(bundle).scores(to_np(qf), to_np(gf))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.gpu
def test_cuda_scores_equal_cpu_scores(fake_bundle):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bundle = load_bundle(fake_bundle)
    rng = np.random.default_rng(3)
    q, g = random_features(bundle, 6, rng), random_features(bundle, 40, rng)
    want = Scorer(bundle).scores(q, g)
    got = Scorer(bundle, "cuda").scores(q, g)
    np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want))
