"""The global descriptor: tal-distill writes it into the checkpoint, tal-export makes it an output
of extractor.onnx / extractor.pt2 equal to the PyTorch head (fp32 and fp16), and the manifest,
the parity report, the torch backend and the Triton configuration describe it."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tal_train.models.folded import WithDescriptor
from tal_export.distill_cli import main as tal_distill
from tal_train.models.folded import fold_model
from tal_export.parity import ParityError, judge, reference_input
from tal_export.triton_repo import extractor_config
from tal_infer.torch_extractor import TorchExtractor
from tal_infer.bundle import load_bundle
from tal_infer.errors import TalError
from tal_infer.images import list_images
from tal_infer.precision import FLOAT16, FLOAT32
from tal_train.checkpoint import load_checkpoint
from tal_train.distill import load_descriptor
from tal_train.models.descriptor import DescriptorHead

from test_backbone_families import FAMILIES
from tiny_models import random_descriptor_head, randomized_model, write_checkpoint

DIM = 32  # tiny_models.random_descriptor_head


def test_tal_distill_adds_a_head_and_keeps_the_rest_of_the_checkpoint(tmp_path, crops):
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", randomized_model(seed=4), run_name="desc-run")
    out = tmp_path / "with-descriptor.pth"
    res = CliRunner().invoke(tal_distill, [str(ckpt), "--images", str(crops), "--dim", "16",
                                           "--blocks", "1", "--block-size", "16",
                                           "--steps-per-block", "3", "--device", "cpu",
                                           "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "held-out recall" in res.output and f"wrote {out}" in res.output
    assert "descriptor" not in load_checkpoint(ckpt)  # --out: the original stays as it was
    loaded = load_checkpoint(out)
    entry = loaded["descriptor"]
    assert entry["dim"] == 16 and entry["distillation"]["images"] == len(list_images(crops))
    assert 0.0 <= entry["distillation"]["holdout_recall"]["recall"] <= 1.0
    original = load_checkpoint(ckpt)
    assert all(torch.equal(v, original["model"][k]) for k, v in loaded["model"].items())
    assert (loaded["run_name"], loaded["epoch"]) == ("desc-run", 3)


def test_tal_distill_needs_crops(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", randomized_model(seed=4))
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(tal_distill, [str(ckpt), "--images", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "error:" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_descriptor_equals_the_pytorch_head_on_fresh_images(fp32_bundle, fp16_bundle,
                                                                 tiny_model, tiny_descriptor,
                                                                 precision):
    folder = fp32_bundle[0] if precision == "fp32" else fp16_bundle
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    images = torch.randint(0, 256, (6, *tiny_model.config.image_size, 3), dtype=torch.uint8,
                           generator=g).numpy()
    session = ort.InferenceSession(str(folder / "extractor.onnx"))
    names = [o.name for o in session.get_outputs()]
    assert names[-1] == "descriptor"
    got = dict(zip(names, session.run(names, {"images": images})))["descriptor"]
    with torch.no_grad():
        want = tiny_descriptor(tiny_model.extract(reference_input(
            images, tiny_model.config.mean, tiny_model.config.std))).numpy()
    assert got.shape == (6, DIM)
    # fp32: the same arithmetic; fp16: maps rounded to fp16 before the (fp32) head
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0,
                               atol=(FLOAT16 if precision == "fp16" else FLOAT32
                                     ).descriptor_parity.bound)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=2e-3)


def test_manifest_parity_torch_backend_and_triton_see_the_descriptor(fp32_bundle, fp16_bundle):
    folder, _ = fp32_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 3
    assert manifest["descriptor"]["shape"] == [-1, DIM]
    assert manifest["descriptor"]["method"] == "distilled"
    assert manifest["descriptor"]["distillation"] == {"test": "random weights"}
    assert manifest["parity"]["descriptor"]["max_abs"] < FLOAT32.descriptor_parity.bound
    assert "descriptor.max_abs" in manifest["parity"]["criterion"]
    fp16 = json.loads((fp16_bundle / "manifest.json").read_text())["parity"]
    assert fp16["passed"] and fp16["descriptor"]["max_abs"] < FLOAT16.descriptor_parity.bound

    bundle = load_bundle(folder)
    assert bundle.output_shapes["descriptor"] == (DIM,)
    torch_backend = TorchExtractor(bundle, "cpu")
    images = np.random.default_rng(1).integers(0, 256, (3, bundle.height, bundle.width, 3),
                                              dtype=np.uint8)
    session = ort.InferenceSession(str(folder / "extractor.onnx"))
    want = session.run(["descriptor"], {"images": images})[0]
    np.testing.assert_allclose(torch_backend(images)["descriptor"], want, rtol=0, atol=1e-5)
    config = extractor_config("extractor", manifest, "onnxruntime_onnx", 8)
    assert 'name: "descriptor"' in config and f"dims: [ {DIM} ]" in config


def test_a_head_that_does_not_fit_the_model_is_refused(tiny_model):
    wrong = DescriptorHead({"di_res4": (8, 4, 2)}, dim=DIM)
    entry = {**wrong.spec(), "state": wrong.state_dict()}
    with pytest.raises(TalError, match="distill it again"):
        load_descriptor({"descriptor": entry}, tiny_model)
    assert load_descriptor({}, tiny_model) is None


def test_parity_fails_on_a_wrong_descriptor():
    report = {"count": 4, "images": "x", "scores": {"max_rel": 0.0}, "features": {"max_abs": 0.0},
              "top1_agreement": 1.0, "top1_agreement_beyond_ties": 1.0, "tie_tolerance": 0.0,
              "descriptor": {"max_abs": 0.02, "max_rel": 0.02}}
    with pytest.raises(ParityError, match="descriptor max_abs 2.00e-02"):
        judge(report, FLOAT16)
    assert judge({**report, "descriptor": {"max_abs": 1e-6}}, FLOAT32)["passed"]


@pytest.mark.parametrize("family", FAMILIES)
def test_descriptor_output_works_for_every_backbone_family(family):
    """The head reads the neck's stream maps, which every registered backbone gives alike: the
    folded extractor's descriptor equals the head on the unfolded model's maps."""
    model = randomized_model(seed=5, backbone=FAMILIES[family][0])
    head = random_descriptor_head(model)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    images = torch.randint(0, 256, (3, *model.config.image_size, 3), dtype=torch.uint8,
                           generator=g)
    extractor = WithDescriptor(fold_model(model), head)
    with torch.no_grad():
        got = extractor(images)[-1]
        want = head(model.extract(reference_input(images.numpy(), model.config.mean,
                                                  model.config.std)))
    assert extractor.names[-1] == "descriptor" and got.shape == (3, DIM)
    torch.testing.assert_close(got, want, atol=FLOAT32.descriptor_parity.bound, rtol=0)
