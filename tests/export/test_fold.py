"""The folded extractor (before ONNX) equals the unfolded model's `extract`, for the paper's
ablation switches (fp16 folding: test_fold_fp16.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tal_train.models.folded import FoldedNorm, fold_model, folded_extractor, output_names
from tal_export.parity import reference_input

from tiny_models import random_descriptor_head, randomized_model

ABLATIONS = {
    "full": {},
    "ds-only": dict(streams=("ds",)),
    "di-only-res5": dict(streams=("di",), scales=("res5",)),
    "di-bn-res4": dict(di_norm="bn", scales=("res4",)),
    "di-avg": dict(di_norm="avg"),
    "dabn-own-stats": dict(dabn_stats="own"),
    "di-avg-own-stats": dict(di_norm="avg", dabn_stats="own"),
    "ibn-a-bottleneck": dict(backbone="resnet50_ibn_a_x0_25"),
    "plain-resnet": dict(backbone="resnet18_x0_25"),
}


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_folded_module_equals_model_extract(name):
    model = randomized_model(seed=len(name), **ABLATIONS[name])
    images = random_images(3, model.config.image_size, seed=len(name))
    ref = model.extract(reference_input(images.numpy(), model.config.mean, model.config.std))
    with torch.no_grad():
        out = fold_model(model)(images)
    assert list(ref) == output_names(model)
    for got, key in zip(out, output_names(model)):
        assert got.shape == ref[key].shape and got.dtype == torch.float32
        torch.testing.assert_close(got, ref[key], atol=2e-5, rtol=0)  # unit-length vectors


def test_every_domain_norm_is_folded_and_the_model_is_untouched():
    model = randomized_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_model(model)
    assert sum(isinstance(m, FoldedNorm) for m in folded.modules()) == sum(
        type(m).__name__ == "DomainNorm" for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in folded.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("backbone", ["resnet18_ibn_b_x0_25", "osnet_x0_25"])
def test_the_exported_extractor_has_no_in_place_modules(backbone):
    """torch 2.6's ONNX exporter cannot decompose in-place ops (the export fails there): what
    the export traces has none, whatever the backbone uses in training (ReLU(inplace=True))."""
    model = randomized_model(backbone=backbone, di_norm="bn")
    assert any(getattr(m, "inplace", False) for m in model.modules())  # the case that matters
    extractor = folded_extractor(model, random_descriptor_head(model))
    assert not [m for m in extractor.modules() if getattr(m, "inplace", False)]
