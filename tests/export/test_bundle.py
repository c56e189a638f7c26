"""export_bundle / tal-export end to end on a tiny randomized checkpoint: manifest schema and
hashes, parity report, extractor.safetensors through the torch backend, fp16 ranking agreement,
atomic writes, clear errors."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tal_export import ParityError, bundle, export_bundle, parity
from tal_export.cli import main
from tal_export.parity import judge, ranking_agreement, reference_input, top1_beyond_ties
from tal_infer import ReIDEngine, scoring
from tal_infer.errors import TalError
from tal_infer.precision import FLOAT16, FLOAT32
from tal_infer.backends import open_extractor
from tal_infer.bundle import load_bundle
from tal_infer.bundle_schema import Manifest
from tal_train.checkpoint import CheckpointError

from tiny_models import randomized_model, write_checkpoint

MANIFEST_KEYS = {"format", "format_version", "toolkit_version", "created", "run_name",
                 "checkpoint", "input", "domains", "streams", "scales", "features", "dtype",
                 "precision", "opset", "matching", "model_config", "files", "parity",
                 "descriptor"}
FILES = {"extractor.onnx", "extractor.safetensors", "matcher.onnx", "matcher_trt.onnx",
         "heads.npz"}


def _sha256(path) -> str:
    """Independent of the code under test: hash the whole file at once."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def images_for(model, n=4, seed=0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *model.config.image_size, 3), dtype=torch.uint8,
                         generator=g).numpy()


def test_cli_writes_a_complete_bundle(fp32_bundle, tiny_checkpoint):
    out, output = fp32_bundle
    assert "bundle written to" in output and "top-1 agreement 1.000" in output
    manifest = manifest_of(out)
    assert set(manifest) == MANIFEST_KEYS
    assert (manifest["format"], manifest["format_version"], manifest["opset"]) == (
        "tal-reid-bundle", 3, 18)
    assert Manifest.from_json(manifest).to_json() == manifest  # one schema, both sides
    assert manifest["checkpoint"] == {"file": "ckpt.pth", "sha256": _sha256(tiny_checkpoint),
                                      "epoch": 3}
    assert set(manifest["files"]) == FILES == {p.name for p in out.iterdir()} - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_manifest_describes_model_and_parity(fp32_bundle, tiny_model):
    out, _ = fp32_bundle
    m = manifest_of(out)
    cfg = tiny_model.config
    assert m["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                          "height": 128, "width": 64, "resize": "bilinear",
                          "mean": list(cfg.mean), "std": list(cfg.std)}
    assert m["domains"] == {"names": list(cfg.domains), "count": 3}
    assert (m["streams"], m["scales"], m["dtype"]) == (["ds", "di"], ["res4", "res5"], "float32")
    assert m["features"]["ds_res4"] == {"shape": [-1, 3, 64, 8, 4], "hw": [8, 4]}
    assert m["features"]["di_res5"] == {"shape": [-1, 64, 4, 2], "hw": [4, 2]}
    assert m["matching"] == tiny_model.projection_form()["matching"]
    p = m["parity"]
    assert p["passed"] is True and p["images"] == "generated" and p["count"] == 3 * parity.GENERATED_IDENTITIES
    assert p["scores"]["max_rel"] < 1e-4 and p["features"]["max_abs"] < 1e-4
    assert p["top1_agreement"] == 1.0 and p["top10_agreement"] == 1.0


def reference_outputs(model, head, images) -> dict:
    """The PyTorch model's maps and its descriptor head on them (the extractor's outputs)."""
    with torch.no_grad():
        ref = model.extract(reference_input(images, model.config.mean, model.config.std))
        return {**ref, "descriptor": head(ref)}


def test_bundle_graphs_and_heads_match_the_model(fp32_bundle, tiny_model, tiny_descriptor):
    out, _ = fp32_bundle
    graph = onnx.load(str(out / "extractor.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in tiny_model.modules())
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == convs  # never K+1 copies
    heads = np.load(out / "heads.npz")
    arrays = tiny_model.projection_form()["arrays"]
    assert set(heads.files) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(heads[key], value)
    images = images_for(tiny_model, 5, seed=7)  # fresh inputs, another batch size
    ref = reference_outputs(tiny_model, tiny_descriptor, images)
    session = ort.InferenceSession(str(out / "extractor.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(ref)
    for o, got in zip(session.get_outputs(), session.run(None, {"images": images})):
        np.testing.assert_allclose(got, ref[o.name].numpy(), rtol=0, atol=2e-5)


def test_torch_backend_equals_model_extract(fp32_bundle, tiny_model, tiny_descriptor):
    """extractor.safetensors as the runtime's torch backend runs it: the network rebuilt from
    the model code and the manifest's config, the weights loaded as data."""
    out, _ = fp32_bundle
    extractor = open_extractor(load_bundle(out), "torch", "cpu")
    images = images_for(tiny_model, 3, seed=8)
    ref = reference_outputs(tiny_model, tiny_descriptor, images)
    got = extractor(images)
    assert list(got) == list(ref)
    for key, value in got.items():
        np.testing.assert_allclose(value, ref[key].numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_torch_backend_equals_onnxruntime(fp32_bundle, fp16_bundle, tiny_model, which):
    """Parity of the two backends on fresh images, in each bundle's precision (fp16: both
    compute in fp16 with the same weights; tolerance: fp16 resolution of unit vectors)."""
    folder = fp32_bundle[0] if which == "fp32" else fp16_bundle
    bundle = load_bundle(folder)
    images = images_for(tiny_model, 4, seed=11)
    got = open_extractor(bundle, "torch", "cpu")(images)
    want = open_extractor(bundle, "onnxruntime", "cpu")(images)
    assert list(got) == list(want)
    tolerance = 2e-5 if which == "fp32" else 4e-3
    for key in want:
        assert got[key].dtype == want[key].dtype == bundle.precision.numpy_dtype
        np.testing.assert_allclose(got[key].astype(np.float32), want[key].astype(np.float32),
                                   atol=tolerance, rtol=0)


def test_fp16_bundle(fp16_bundle, crops, tiny_model):
    m = manifest_of(fp16_bundle)
    assert m["dtype"] == "float16" and m["precision"]["weights"] == "float16"
    assert "dabn_attention" in m["precision"]["kept_float32"]
    p = m["parity"]
    # the criterion is agreement beyond fp16 near-ties (docs/export.md); strict top-1 only
    # loses queries whose best two gallery scores are closer than fp16 resolution
    assert p["images"] == str(crops) and p["passed"] and p["top1_agreement_beyond_ties"] >= 0.99
    assert p["top1_agreement"] >= 0.95
    assert p["criterion"] == ("top1_agreement_beyond_ties >= 0.99 and descriptor.max_abs < "
                              "0.005")
    assert p["top1_agreement_beyond_ties"] >= p["top1_agreement"]
    graph = onnx.load(str(fp16_bundle / "extractor.onnx"))
    inits = {t.name: t for t in graph.graph.initializer}
    conv_weights = [inits[n.input[1]] for n in graph.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in conv_weights)
    session = ort.InferenceSession(str(fp16_bundle / "extractor.onnx"),
                                   providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images_for(tiny_model, 2)})
    assert all(o.dtype == np.float16 for o in outputs)


@pytest.mark.parametrize("precision", [FLOAT32, FLOAT16], ids=["fp32", "fp16"])
def test_the_exports_precision_holds_from_the_extractor_to_the_op(precision, fp32_bundle,
                                                                  fp16_bundle, tiny_model,
                                                                  monkeypatch):
    """Decided once by the export, recorded in the manifest, read once by the runtime: an fp16
    bundle's features reach qaconv_match as fp16, an fp32 bundle's as fp32."""
    folder = fp16_bundle if precision is FLOAT16 else fp32_bundle[0]
    manifest = manifest_of(folder)
    assert (manifest["dtype"], manifest["precision"]) == (precision.dtype,
                                                          precision.to_manifest())
    engine = ReIDEngine(folder, backend="onnxruntime", device="cpu", matcher="numpy")
    assert engine.precision is precision
    seen, real = [], scoring.qaconv_match

    def spy(q, g, wq, wg, backend="auto"):
        seen.extend((q.dtype, g.dtype))
        return real(q, g, wq, wg, backend=backend)

    monkeypatch.setattr(scoring, "qaconv_match", spy)
    feats = engine.embed(list(images_for(tiny_model, 3)))
    assert engine.scores(feats, feats).shape == (3, 3)
    assert seen and set(seen) == {precision.numpy_dtype}


def test_precision_onnx_types_are_the_onnx_enums():
    assert (FLOAT32.onnx_type, FLOAT16.onnx_type) == (onnx.TensorProto.FLOAT,
                                                      onnx.TensorProto.FLOAT16)


def test_failed_export_leaves_no_bundle_and_keeps_an_earlier_one(tmp_path, tiny_checkpoint,
                                                                 monkeypatch):
    def fake_graphs(model, folder, *args):
        (folder / "extractor.onnx").write_bytes(b"half-written")
        return model.projection_form()

    def failing_parity(*args):
        raise ParityError("parity check failed (test)")

    monkeypatch.setattr(bundle, "_write_graphs", fake_graphs)
    monkeypatch.setattr(bundle, "_parity", failing_parity)
    target = tmp_path / "out"
    with pytest.raises(ParityError):
        export_bundle(tiny_checkpoint, target, progress=False)
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "manifest.json").write_text("{}")  # an earlier bundle stays as it was
    with pytest.raises(ParityError):
        export_bundle(tiny_checkpoint, target, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["manifest.json"]


def test_existing_folders(tmp_path):
    old = tmp_path / "bundle"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    new = tmp_path / ".bundle.partial-x"
    new.mkdir()
    (new / "manifest.json").write_text("new")
    bundle._move_into_place(new, old)
    assert (old / "manifest.json").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["bundle"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(TalError, match="is not an export bundle; refusing"):
        bundle._check_target(other)


def test_parity_judgement():
    report = {"images": "generated", "count": 8, "features": {"max_abs": 1e-3, "max_rel": 1e-3},
              "scores": {"max_abs": 2e-4, "max_rel": 2e-4}, "top1_agreement": 0.98,
              "top10_agreement": 1.0, "top1_agreement_beyond_ties": 1.0, "tie_tolerance": 0.01}
    with pytest.raises(ParityError, match=r"fp32: needs scores.max_rel < 0.0001.*no bundle"):
        judge(report, FLOAT32)
    assert judge(report, FLOAT16)["passed"] is True
    with pytest.raises(ParityError, match="fp16: needs top1_agreement_beyond_ties >= 0.99"):
        judge({**report, "top1_agreement_beyond_ties": 0.98}, FLOAT16)


def test_ranking_agreement_excludes_self_matches():
    ref = np.array([[9, 3, 2, 1], [3, 9, 1, 2], [2, 1, 9, 3], [1, 2, 3, 9]], float)
    swapped = ref.copy()
    swapped[0, 1:3] = [2, 3]  # row 0: best other crop changes from 1 to 2
    assert ranking_agreement(ref, ref, k=2) == (1.0, 1.0)
    top1, top2 = ranking_agreement(swapped, ref, k=2)
    assert top1 == 0.75 and top2 == 1.0  # same top-2 set, different order


def test_top1_beyond_ties_forgives_only_near_ties():
    ref = np.array([[9, 5.000, 4.999, 1], [5, 9, 1, 2], [4, 1, 9, 3], [1, 2, 3, 9]])
    near = ref.copy()
    near[0, 1:3] = [4.999, 5.000]     # row 0 picks crop 2, 0.001 below the best in ref
    far = ref.copy()
    far[1, 0], far[1, 3] = 2, 5       # row 1 picks crop 3, 3 below the best in ref
    assert top1_beyond_ties(near, ref, tolerance=0.01) == 1.0
    assert top1_beyond_ties(near, ref, tolerance=0.0) == 0.75
    assert top1_beyond_ties(far, ref, tolerance=0.01) == 0.75


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign", "mismatched"])
def test_bad_checkpoints_are_one_line_errors(tmp_path, kind):
    path = tmp_path / "ckpt.pth"
    if kind == "corrupt":
        path.write_bytes(b"\x80\x02 not a checkpoint")
    elif kind == "foreign":
        torch.save({"state_dict": {}}, path)
    elif kind == "mismatched":
        model = randomized_model(seed=1)
        other = randomized_model(seed=1, neck_channels=32)
        torch.save({}, path)
        write_checkpoint(path, model)
        ckpt = torch.load(path, weights_only=True)
        ckpt["model"] = other.state_dict()
        torch.save(ckpt, path)
    expected = {"missing": "checkpoint not found", "corrupt": "not a readable tal-reid checkpoint",
                "foreign": "not a tal-reid checkpoint",
                "mismatched": "weights do not fit the model"}[kind]
    with pytest.raises(CheckpointError, match=expected):
        export_bundle(path, tmp_path / "out", progress=False)
    result = CliRunner().invoke(main, [str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code != 0 and result.output.startswith("error: ")
    assert expected in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_option_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(TalError, match="QAConv heads were trained for"):
        export_bundle(tiny_checkpoint, tmp_path / "o", image_size=(256, 128), progress=False)
    with pytest.raises(TalError, match="--opset 12 is not supported"):
        export_bundle(tiny_checkpoint, tmp_path / "o", opset=12, progress=False)
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "--image-size", "big"])
    assert result.exit_code == 2 and "'big' is not HxW" in result.output
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "Examples:" in help_text and "--verify-images" in help_text
    assert not (tmp_path / "o").exists()
