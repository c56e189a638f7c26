"""Every block type of the backbone registry through the whole pipeline: two training
iterations on generated data (the tal-train engine), then tal-export with its parity check
(ONNX Runtime vs the PyTorch model); and the folded extractor of the OSNet families against the
unfolded model in fp32 and fp16 (the exporter has no backbone-specific code, so this is where a
new backbone shows it exports)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tal_export import export_bundle
from tal_train.models.folded import fold_model, output_names
from tal_export.parity import reference_input
from tal_infer.precision import FLOAT16
from tal_train.checkpoint import load_checkpoint
from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.engine import train
from tal_train.options import TrainOptions, model_config
from tal_train.models import build_model

from tiny_models import randomized_model

# block type -> the small registered backbone that has it, and tal-train options. The OSNet and
# bottleneck rows use --di-norm bn: DABN's folded attention is ~20 ONNX nodes per norm, and OSNet
# x0.25 has ~85 norms (ResNet-50 x0.25 53), which takes the ONNX exporter ~45 s per export on 2
# CPU cores; DABN with OSNet is checked by the folding test below, and through ONNX on the
# basic and IBN rows.
FAMILIES = {
    "basic": ("resnet18_x0_25", {}),
    "bottleneck": ("resnet50_x0_25", {"di_norm": "bn"}),
    "ibn-a": ("resnet18_ibn_a_x0_25", {}),
    "ibn-b": ("resnet18_ibn_b_x0_25", {}),
    "osnet": ("osnet_x0_25", {"di_norm": "bn"}),
    "osnet-ain": ("osnet_ain_x0_25", {"di_norm": "bn"}),
}


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> list[Path]:
    """Three synthetic domains of 8 identities at 64x32: train on a and b, check the export on c."""
    config = SyntheticConfig(identities=8, domains=3, cameras=2, images_per_id=(3, 4),
                             size=(64, 32), distractors=0, junk=0)
    return synthesize(tmp_path_factory.mktemp("synthetic"), config, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_block_type_trains_two_iterations_and_exports_with_parity(family, domains, tmp_path):
    name, overrides = FAMILIES[family]
    options = TrainOptions(protocol="p2", data_root=str(domains[0].parent), target="domain-c",
                           preset="tiny", backbone=name, image_size=[64, 32], batch_size=8,
                           epochs=1, iters=2, out=str(tmp_path / "run"), progress=False,
                           **overrides)
    result = train(options)
    assert len(result.losses) == 2
    assert all(np.isfinite(v) for step in result.losses for v in step.values())
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"]["backbone"] == name
    torch.manual_seed(options.seed)  # the engine's initialization, to see that training moved it
    initial = build_model(model_config(options, ["domain-a", "domain-b"]))
    conv = initial.backbone.input_conv()
    trained = next(v for k, v in ckpt["model"].items()
                   if k.startswith("backbone.") and v.shape == conv.weight.shape)
    assert not torch.equal(trained, conv.weight.detach())

    bundle = export_bundle(result.checkpoint, tmp_path / "bundle", max_batch=8, progress=False,
                           verify_images=domains[0].parent / "domain-c")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_config"]["backbone"] == name
    parity = manifest["parity"]
    assert parity["passed"] and parity["count"] >= 20
    assert parity["scores"]["max_rel"] < 1e-4 and parity["features"]["max_abs"] < 1e-4
    assert parity["top1_agreement"] == 1.0


@pytest.mark.parametrize("name", ["osnet_x0_25", "osnet_ain_x0_25"])
def test_folded_osnet_equals_the_unfolded_model(name):
    model = randomized_model(seed=11, backbone=name)
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (3, *model.config.image_size, 3), dtype=torch.uint8,
                           generator=g)
    ref = model.extract(reference_input(images.numpy(), model.config.mean, model.config.std))
    with torch.no_grad():
        fp32, fp16 = fold_model(model)(images), fold_model(model, FLOAT16)(images)
    for got, half, key in zip(fp32, fp16, output_names(model)):
        torch.testing.assert_close(got, ref[key], atol=2e-5, rtol=0)  # unit-length vectors
        assert half.dtype == torch.float16
        assert (half.float() - ref[key]).abs().max() < 2e-2  # as the ResNet fp16 folding test
