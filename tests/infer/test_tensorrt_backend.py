"""The ``tensorrt`` backend through the real runtime code (tal_infer.tensorrt_runtime, backends,
ReIDEngine) with a stand-in for the TensorRT runtime (fake_tensorrt_runtime.py: TensorRT cannot
be installed here). The stand-in's engines run the bundle's own extractor.onnx / matcher.onnx in
ONNX Runtime and enforce one optimization profile as TensorRT does, so the backend's chunking,
layouts, dtypes and buffer binding are checked against independent numbers."""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest

from tal_infer import Gallery, ReIDEngine, backends, tensorrt_runtime
from tal_infer.bundle import load_bundle
from tal_infer.errors import BundleError, TalError
from tal_infer.matching import choose_match_backend, open_matcher
from tal_infer.scoring import Scorer
from tal_infer.tensorrt_runtime import TensorRTExtractor, TensorRTMatcher, build_mismatches

from fake_tensorrt_runtime import calls_of, fake_tensorrt_runtime, write_plan

MAX_BATCH, MAX_QUERY, MAX_GALLERY = 4, 3, 5


def make_trt_bundle(source, folder, dtype: str = "HALF"):
    """A copy of `source` with stand-in plans (profile MAX_BATCH / MAX_QUERY x MAX_GALLERY)."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    h, w = manifest["input"]["height"], manifest["input"]["width"]
    features = manifest["features"]
    image = [[1, h, w, 3], [MAX_BATCH, h, w, 3], [MAX_BATCH, h, w, 3]]
    write_plan(folder / "extractor.plan", folder / "extractor.onnx", {"images": image},
               {"images": "UINT8", **{k: dtype for k in features}})
    names = [i.name for i in ort.InferenceSession(str(folder / "matcher.onnx")).get_inputs()]
    profile = {}
    for name in names:
        side, key = name.split("_", 1)
        top = MAX_QUERY if side == "query" else MAX_GALLERY
        rest = features[key]["shape"][1:]
        profile[name] = [[1, *rest], [top, *rest], [top, *rest]]
    write_plan(folder / "matcher.plan", folder / "matcher.onnx", profile,
               {n: dtype for n in names})
    manifest["tensorrt"] = {"version": "10.13.0.35", "compute_capability": "9.0",
                            "matcher": {"ptx_target": "sm_90a", "ptx_isa": "8.4"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(folder)


@pytest.fixture()
def fake_trt(monkeypatch):
    trt = fake_tensorrt_runtime()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture()
def trt_bundle(exported, tmp_path, fake_trt):
    return make_trt_bundle(exported[1], tmp_path / "bundle")


def with_recorded_build(bundle, **recorded):
    """`bundle` reloaded with its manifest's tensorrt section changed."""
    manifest = json.loads(bundle.file("manifest.json").read_text())
    manifest["tensorrt"].update(recorded)
    bundle.file("manifest.json").write_text(json.dumps(manifest))
    return load_bundle(bundle.path)


def unit_features(bundle, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random features in match layout with unit C-vectors (what the extractor gives)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in bundle.features.items():
        x = rng.standard_normal((n, *spec.match_shape)).astype(np.float32)
        out[name] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return out


def test_extractor_runs_batches_above_the_profile_in_chunks(trt_bundle):
    extractor = TensorRTExtractor(trt_bundle, "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, trt_bundle.height, trt_bundle.width, 3), dtype=np.uint8)
    got = extractor(images)
    calls = calls_of(trt_bundle.file("extractor.onnx"))
    assert [c["images"][0] for c in calls] == [4, 4, 2]  # profile max 4: three calls
    session = ort.InferenceSession(str(trt_bundle.file("extractor.onnx")))
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    assert set(got) == set(want)
    for name in want:  # the engine's outputs are fp16: unit-length maps rounded to 2^-11
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-3)


def test_input_outside_the_profile_is_one_clear_error(trt_bundle):
    extractor = TensorRTExtractor(trt_bundle, "cpu")
    wrong = np.zeros((2, trt_bundle.height + 1, trt_bundle.width, 3), np.uint8)
    with pytest.raises(TalError, match=r"extractor.plan: input images of shape \(2, 65, 32, 3\)"
                                       r" is outside the engine's profile \(1, 64, 32, 3\) \.\. "
                                       r"\(4, 64, 32, 3\)"):
        extractor(wrong)


@pytest.mark.parametrize("dtype", ["FLOAT", "HALF"])
def test_matcher_plan_scores_galleries_in_profile_blocks(exported, tmp_path, fake_trt, dtype):
    bundle = make_trt_bundle(exported[1], tmp_path / "bundle", dtype)
    query, gallery = unit_features(bundle, 7, 1), unit_features(bundle, 12, 2)
    matcher = TensorRTMatcher(bundle, "cpu")
    got = matcher.scores(query, gallery)
    calls = calls_of(bundle.file("matcher.onnx"))
    assert len(calls) == math.ceil(7 / MAX_QUERY) * math.ceil(12 / MAX_GALLERY)
    assert {max(v[0] for k, v in c.items() if k.startswith("query_")) for c in calls} == {3, 1}
    assert {max(v[0] for k, v in c.items() if k.startswith("gallery_")) for c in calls} == {5, 2}
    if dtype == "HALF":  # the engine sees fp16 features; the reference gets the same values
        query, gallery = ({k: v.astype(np.float16).astype(np.float32) for k, v in f.items()}
                          for f in (query, gallery))
    want = Scorer(bundle).scores(query, gallery)
    assert got.shape == (7, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert matcher.chunk_size(7) == MAX_GALLERY


def test_tensorrt_deployment_extracts_and_matches_in_tensorrt(exported, tmp_path, fake_trt,
                                                              monkeypatch, caplog):
    """ReIDEngine(backend="tensorrt"): both plans run, the heads' Python path never does."""
    bundle = make_trt_bundle(exported[1], tmp_path / "bundle", "FLOAT")
    pretend_cuda(monkeypatch)

    def no_python_kernel(*args, **kwargs):
        raise AssertionError("a Python matching kernel ran in a TensorRT deployment")

    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (60, 30, 3), dtype=np.uint8) for _ in range(15)]
    reference = ReIDEngine(bundle, backend="onnxruntime", device="cpu")
    want_feats = reference.embed(crops)
    ref_gallery = Gallery()
    ref_gallery.add({k: v[3:] for k, v in want_feats.items()})
    want = reference.match({k: v[:3] for k, v in want_feats.items()}, ref_gallery, k=4)

    monkeypatch.setattr("tal_infer.scoring.qaconv_match", no_python_kernel)
    with caplog.at_level(logging.INFO, logger="tal_infer"):
        engine = ReIDEngine(bundle, backend="tensorrt", device="cuda", batch_size=6)
    assert "extractor: tensorrt on cuda; matching: tensorrt on cuda" in caplog.text
    assert engine.extractor.name == "tensorrt" and isinstance(engine.matcher, TensorRTMatcher)
    feats = engine.embed(crops)  # batches of 6 through a profile of 4
    gallery = Gallery()
    gallery.add({k: v[3:] for k, v in feats.items()})
    got = engine.match({k: v[:3] for k, v in feats.items()}, gallery, k=4)
    assert [c["images"][0] for c in calls_of(bundle.file("extractor.onnx"))] == [4, 2, 4, 2, 3]
    assert calls_of(bundle.file("matcher.onnx"))
    assert [[m.id for m in row] for row in got] == [[m.id for m in row] for row in want]
    for row_got, row_want in zip(got, want):
        np.testing.assert_allclose([m.score for m in row_got], [m.score for m in row_want],
                                   rtol=1e-4, atol=1e-4)


def pretend_cuda(monkeypatch) -> None:
    """A CUDA machine for the backends' choices, with CPU memory in place of CUDA buffers
    (the stand-in engines read it)."""
    monkeypatch.setattr("tal_infer.devices.cuda_available", lambda: True)
    monkeypatch.setattr("tal_infer.matching.torch_cuda_available", lambda: True)
    monkeypatch.setattr(tensorrt_runtime, "torch_device", lambda device: __import__(
        "torch").device("cpu"))


def _with_matcher_graph(source, folder):
    """A copy of a contract bundle with its matcher.onnx built from its heads (the fake
    bundles have none), so stand-in plans can be made of it."""
    from tal_export.matcher import build_matcher
    from tal_infer.precision import FLOAT32

    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "heads.npz") as heads:
        form = {"matching": manifest["matching"], "arrays": dict(heads)}
    graph = build_matcher(form, manifest["features"], FLOAT32, 18)
    (folder / "matcher.onnx").write_bytes(graph.SerializeToString())
    return folder


@pytest.mark.parametrize("prerank", [0, 12])
def test_two_stage_retrieval_runs_on_the_tensorrt_matcher(fake_bundle_v2, tmp_path, fake_trt,
                                                          monkeypatch, prerank):
    """--candidates with matcher.plan: stage 2 (and the DI pre-rank, from the heads: the plan
    scores all streams at once) give what the heads give."""
    bundle = make_trt_bundle(_with_matcher_graph(fake_bundle_v2, tmp_path / "src"),
                             tmp_path / "bundle", "FLOAT")
    pretend_cuda(monkeypatch)
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(5)
    feats = engine.embed([rng.integers(0, 256, (40, 20, 3), dtype=np.uint8) for _ in range(30)])
    gallery = Gallery()
    gallery.add({k: v[4:] for k, v in feats.items()})
    queries = {k: v[:4] for k, v in feats.items()}
    want = engine.match(queries, gallery, k=3, candidates=6, prerank=prerank)
    trt = ReIDEngine(bundle, backend="tensorrt", device="cuda")
    assert isinstance(trt.matcher, TensorRTMatcher)
    got = trt.match(queries, gallery, k=3, candidates=6, prerank=prerank)
    assert [[m.id for m in row] for row in got] == [[m.id for m in row] for row in want]
    for row_got, row_want in zip(got, want):
        np.testing.assert_allclose([m.score for m in row_got], [m.score for m in row_want],
                                   rtol=1e-4, atol=1e-4)
    assert calls_of(bundle.file("matcher.onnx"))  # stage 2 ran in the plan


def test_tensorrt_backend_needs_cuda_and_both_plans(trt_bundle):
    with pytest.raises(TalError, match="runs on CUDA only"):
        backends.open_tensorrt(trt_bundle, "cpu")
    trt_bundle.file("matcher.plan").unlink()
    with pytest.raises(TalError, match=r"matcher.plan is not in the bundle \(export with --trt\)"):
        backends.open_tensorrt(trt_bundle, "cuda")


def test_loading_warns_where_this_machine_differs_from_the_build(trt_bundle, caplog):
    bundle = with_recorded_build(trt_bundle, version="10.9.0.34")
    with caplog.at_level(logging.WARNING, logger="tal_infer"):
        TensorRTMatcher(bundle, "cpu")
    assert ("the plans were built with TensorRT 10.9.0.34, this is TensorRT 10.13.0.35"
            in caplog.text)
    recorded = {"version": "10.13.0.35", "compute_capability": "9.0",
                "matcher": {"ptx_isa": "8.8"}}
    assert build_mismatches(recorded, "10.13.0.35", (9, 0), (12, 9)) == []
    assert build_mismatches(recorded, "10.13.0.35", (8, 9), (12, 4)) == [
        "the plans were built on a GPU of compute capability 9.0, this GPU has 8.9",
        "matcher.plan embeds PTX ISA 8.8, this driver (CUDA 12.4) accepts up to 8.4; re-export "
        "with --ptx-isa 8.4"]


def test_unreadable_plan_names_the_build_differences(trt_bundle):
    trt_bundle.file("extractor.plan").write_bytes(b"\x00not a plan")
    bundle = with_recorded_build(trt_bundle, version="10.9.0.34")
    with pytest.raises(TalError, match="extractor.plan: TensorRT cannot deserialize it \\(the "
                                       "plans were built with TensorRT 10.9.0.34"):
        TensorRTExtractor(bundle, "cpu")


def test_extractor_plan_outputs_are_checked_against_the_manifest(trt_bundle):
    """Like the ONNX Runtime and torch backends: an engine whose outputs are not the manifest's
    features is refused when it opens, naming both shapes."""
    spec = json.loads(trt_bundle.file("extractor.plan").read_text())
    channels = trt_bundle.features["di_res4"].shape[0]
    h, w = trt_bundle.features["di_res4"].hw
    write_plan(trt_bundle.file("extractor.plan"), trt_bundle.file("extractor.onnx"),
               spec["profile"], spec["dtypes"], shapes={"di_res4": [-1, channels + 1, h, w]})
    with pytest.raises(BundleError, match=rf"manifest.json: feature di_res4 has shape \[-1, "
                                          rf"{channels}, {h}, {w}\], but extractor.plan gives "
                                          rf"\[N, {channels + 1}, {h}, {w}\]"):
        TensorRTExtractor(trt_bundle, "cpu")


def test_matching_backend_is_chosen_apart_from_the_extractor(trt_bundle, monkeypatch):
    """matcher.plan beside any extractor (--matcher tensorrt), and the heads beside the
    TensorRT extractor (--matcher numpy); auto pairs matcher.plan with the TensorRT one."""
    pretend_cuda(monkeypatch)
    precision, channels = trt_bundle.precision, 8
    assert choose_match_backend("tensorrt", "cuda", precision, channels, "onnxruntime") \
        == "tensorrt"
    assert choose_match_backend("auto", "cuda", precision, channels, "tensorrt") == "tensorrt"
    assert choose_match_backend("numpy", "cuda", precision, channels, "tensorrt") == "numpy"
    assert isinstance(open_matcher(trt_bundle, "tensorrt", "cuda"), TensorRTMatcher)
    heads = open_matcher(trt_bundle, "numpy", "cpu")
    assert isinstance(heads, Scorer) and (heads.name, heads.device) == ("numpy", "cpu")
    with pytest.raises(TalError, match="runs on CUDA only"):
        open_matcher(trt_bundle, "tensorrt", "cpu")
    engine = ReIDEngine(trt_bundle, backend="tensorrt", matcher="numpy", device="cuda")
    assert engine.extractor.name == "tensorrt" and engine.matcher.name == "numpy"
