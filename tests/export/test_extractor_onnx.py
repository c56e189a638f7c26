"""The exported extractor graph (ONNX Runtime) equals the unfolded PyTorch model for ablation
configurations; one Conv node per convolution; dynamic batch; onnx full check.
(The default configuration goes through the whole bundle in test_bundle.py.)"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tal_export.extractor_export import export_program, onnx_graph
from tal_train.models.folded import fold_model, output_names
from tal_export.parity import reference_input

from tiny_models import randomized_model

ABLATIONS = {
    # DI stream alone with its own BN, one scale, IBN-a (split instance/batch norm)
    "di-only-bn-res4-ibn-a": dict(streams=("di",), di_norm="bn", scales=("res4",),
                                     backbone="resnet18_ibn_a_x0_25"),
    # (DS + DI with DABN on both scales runs in test_bundle.py; DS alone is folded like the
    # DS rows there, see test_fold.py)
}


def conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_onnx_extractor_equals_unfolded_model(name):
    model = randomized_model(seed=21 + len(name), **ABLATIONS[name])
    graph = onnx_graph(export_program(fold_model(model), model.config.image_size, 8),
                       output_names(model), opset=18)
    onnx.checker.check_model(graph, full_check=True)
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == conv_count(model)
    assert [o.name for o in graph.graph.output] == output_names(model)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(len(name))
    for n in (1, 3):  # the batch dimension is dynamic
        images = torch.randint(0, 256, (n, *model.config.image_size, 3), dtype=torch.uint8,
                               generator=g).numpy()
        ref = model.extract(reference_input(images, model.config.mean, model.config.std))
        outputs = session.run(None, {"images": images})
        for key, got in zip(output_names(model), outputs):
            assert got.shape == tuple(ref[key].shape)
            np.testing.assert_allclose(got, ref[key].numpy(), rtol=0, atol=2e-5)
