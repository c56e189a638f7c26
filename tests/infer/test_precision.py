"""Precision decided once (the manifest) and read once (`Bundle.precision`): an fp16 bundle's
features stay fp16 from the extractor to `qaconv_match`, an fp32 bundle's stay fp32, on every
matching backend the CLI and the API choose; the matcher choice really reaches the op."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import Gallery, ReIDEngine, scoring
from tal_infer.matching import MATCH_BACKENDS
from tal_infer.bundle import load_bundle
from tal_infer.cli import main
from tal_infer.errors import BundleError, TalError
from tal_infer.precision import FLOAT16, FLOAT32, PRECISIONS, precision_of_manifest

CPU_MATCHERS = ["auto", "numpy", "torch"]  # triton on the CPU needs TRITON_INTERPRET=1


class OpSpy:
    """Stands in for `qaconv_match` in tal_infer.scoring: records what reaches the op."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str, str]] = []  # (array library, feature dtype, backend)
        self.real = scoring.qaconv_match
        monkeypatch.setattr(scoring, "qaconv_match", self)

    def __call__(self, q, g, wq, wg, backend="auto"):
        for x in (q, g):
            library = "numpy" if isinstance(x, np.ndarray) else type(x).__module__.split(".")[0]
            self.calls.append((library, str(x.dtype).removeprefix("torch."), backend))
        return self.real(q, g, wq, wg, backend=backend)


def _crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 20, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("matcher", CPU_MATCHERS)
@pytest.mark.parametrize("bundle_fixture, dtype", [("fake_bundle", "float32"),
                                                   ("fake_bundle_fp16", "float16")])
def test_features_reach_the_op_in_the_bundles_precision(request, monkeypatch, bundle_fixture,
                                                        dtype, matcher):
    if matcher == "torch":
        pytest.importorskip("torch")
    engine = ReIDEngine(request.getfixturevalue(bundle_fixture), backend="onnxruntime",
                        device="cpu", matcher=matcher)
    assert engine.precision is PRECISIONS[dtype]
    feats = engine.embed(_crops(5))
    assert {str(v.dtype) for v in feats.values()} == {dtype}
    gallery = Gallery()
    gallery.add(feats)  # the API gallery keeps them as they are
    spy = OpSpy(monkeypatch)
    hits = engine.match({k: v[:2] for k, v in feats.items()}, gallery, k=3)
    assert len(hits) == 2 and all(len(row) == 3 for row in hits)
    # auto on the CPU: the torch path where torch is installed (it is faster than numpy)
    library, backend = ("numpy", "numpy") if matcher == "numpy" else ("torch", "torch")
    assert engine.matcher.name == backend
    assert spy.calls and set(spy.calls) == {(library, dtype, backend)}


def test_fp32_features_given_to_an_fp16_engine_are_matched_in_fp16(fake_bundle_fp16,
                                                                    monkeypatch):
    engine = ReIDEngine(fake_bundle_fp16, backend="onnxruntime", device="cpu")
    feats = {k: v.astype(np.float32) for k, v in engine.embed(_crops(3)).items()}
    spy = OpSpy(monkeypatch)
    engine.scores(feats, feats)
    assert {dtype for _, dtype, _ in spy.calls} == {"float16"}


def test_the_cli_matcher_option_reaches_the_op(fake_bundle_fp16, crop_folders, tmp_path,
                                               monkeypatch):
    pytest.importorskip("torch")
    queries, gallery = crop_folders
    spy = OpSpy(monkeypatch)
    res = CliRunner().invoke(main, [str(a) for a in (
        "--gallery", gallery, "--queries", queries, "--model", fake_bundle_fp16,
        "--device", "cpu", "--matcher", "torch", "--out", tmp_path / "r.json")])
    assert res.exit_code == 0, res.stderr
    assert "(float16)" in res.stderr and "matching: torch on cpu" in res.stderr
    assert spy.calls and set(spy.calls) == {("torch", "float16", "torch")}


def test_fp16_and_fp32_bundles_rank_alike(fake_bundle, fake_bundle_fp16):
    """The fp16 twin of the same graph and heads: scores within fp16 feature resolution."""
    crops = _crops(8, seed=3)
    want, got = (ReIDEngine(b, backend="onnxruntime", device="cpu") for b in
                 (fake_bundle, fake_bundle_fp16))
    f32, f16 = want.embed(crops), got.embed(crops)
    ref, half = want.scores(f32, f32), got.scores(f16, f16)
    np.testing.assert_allclose(half, ref, rtol=0, atol=2e-2 * float(np.abs(ref).max()))


def test_matcher_choices_are_checked_when_the_engine_opens(fake_bundle):
    with pytest.raises(TalError, match="unknown matching backend 'cublas'; choose one of "
                                       + ", ".join(MATCH_BACKENDS)):
        ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu", matcher="cublas")
    with pytest.raises(TalError, match="the tensorrt matcher runs on CUDA only"):
        ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu", matcher="tensorrt")
    pytest.importorskip("torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(TalError, match="backend 'triton'"):
            ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu", matcher="triton")


def test_manifest_precision_is_read_and_checked_when_the_bundle_opens(fake_bundle, tmp_path):
    assert load_bundle(fake_bundle).precision is FLOAT32
    manifest = json.loads((fake_bundle / "manifest.json").read_text())
    assert precision_of_manifest({**manifest, "precision": FLOAT16.to_manifest(),
                                  "dtype": "float16"}) is FLOAT16
    for change, problem in [({"dtype": "float64"}, "dtype 'float64' is not one of"),
                            ({"precision": {"features": "float16"}},
                             "precision.features 'float16' disagrees with dtype 'float32'")]:
        folder = tmp_path / problem.split()[0].replace(".", "-")
        shutil.copytree(fake_bundle, folder)
        (folder / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(BundleError, match="manifest.json: " + problem):
            load_bundle(folder)
