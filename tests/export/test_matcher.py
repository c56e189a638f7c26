"""matcher.onnx equals the PyTorch model's scores (`TALModel.match`) for every head variant, and
matcher_trt.onnx is a well-formed tal::QAConvMatch graph computing the same scores (evaluated
with onnx's reference evaluator, the custom node run by tal_plugins' numpy path)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tal_export.manifest import feature_sections


def feature_specs(model) -> dict:
    """The manifest ``features`` section as JSON, as the matcher builder takes it."""
    return {n: f.to_json() for n, f in feature_sections(model).items()}
from tal_export.matcher import build_matcher
from tal_infer.features import feature_names, match_layout
from tal_infer.heads import AFFINE, MODES, SCALE_ARRAYS, array_key, stream_score
from tal_infer.precision import FLOAT16, FLOAT32
from tal_plugins import qaconv_match
from tal_plugins import trt as plugin

from tiny_models import randomized_model

HEADS = {
    "msda": {}, "avg": dict(ds_head="avg"), "vote": dict(ds_head="vote"),
    "di-only": dict(streams=("di",)), "ds-only-res5": dict(streams=("ds",), scales=("res5",)),
}


class QAConvMatch(OpRun):
    op_domain = plugin.ONNX_DOMAIN

    def _run(self, query, gallery, wq, wg, plugin_namespace=None, plugin_version=None, aot=None):
        return (qaconv_match(query.astype(np.float32), gallery.astype(np.float32), wq, wg),)


def random_features(model, n: int, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in feature_specs(model).items():
        x = torch.randn(n, *spec["shape"][1:], generator=g)
        out[name] = torch.nn.functional.normalize(x, dim=-3).to(dtype)  # unit C-vectors
    return out


def feed(query, gallery) -> dict[str, np.ndarray]:
    out = {f"query_{k}": v.numpy() for k, v in query.items()}
    out.update({f"gallery_{k}": v.numpy() for k, v in gallery.items()})
    return out


def graphs(model, precision=FLOAT32):
    form, specs = model.projection_form(), feature_specs(model)
    return (build_matcher(form, specs, precision, 18),
            build_matcher(form, specs, precision, 18, custom_op=True))


@pytest.mark.parametrize("name", list(HEADS))
def test_matchers_equal_model_match(name):
    model = randomized_model(seed=11 + len(name), **HEADS[name])
    query, gallery = random_features(model, 5, 1), random_features(model, 7, 2)
    ref = model.match(query, gallery).numpy()
    standard, custom = graphs(model)
    onnx.checker.check_model(standard, full_check=True)
    session = ort.InferenceSession(standard.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], feed(query, gallery))[0]
    scale = np.abs(ref).max()
    assert scores.shape == (5, 7) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-5 * scale)
    custom_scores = ReferenceEvaluator(custom, new_ops=[QAConvMatch]).run(
        ["scores"], feed(query, gallery))[0]
    np.testing.assert_allclose(custom_scores, ref, rtol=0, atol=1e-5 * scale)


def heads_reference(form: dict, query, gallery) -> np.ndarray:
    """The scores of `tal_infer.heads` (the formulas' one home) on numpy arrays in match layout,
    with the numpy matching path: what the emitted graphs must equal."""
    arrays, matching = form["arrays"], form["matching"]
    total = 0.0
    for stream in matching["score"]:
        mode, names = matching["streams"][stream]["mode"], feature_names([stream],
                                                                          matching["scales"])
        scales = [{k: arrays[array_key(stream, s, k)] for k in SCALE_ARRAYS[mode]}
                  for s in matching["scales"]]
        total = total + stream_score(mode, scales, arrays[array_key(stream, None, AFFINE)],
                                     [match_layout(query[n].numpy()) for n in names],
                                     [match_layout(gallery[n].numpy()) for n in names],
                                     qaconv_match)
    return total


def test_head_variants_cover_every_matching_mode():
    modes = {s["mode"] for name in HEADS for s in randomized_model(
        **HEADS[name]).projection_form()["matching"]["streams"].values()}
    assert modes == set(MODES)


@pytest.mark.parametrize("name", list(HEADS))
def test_matchers_emit_the_runtime_head_formulas(name):
    model = randomized_model(seed=21 + len(name), **HEADS[name])
    query, gallery = random_features(model, 4, 7), random_features(model, 6, 8)
    want = heads_reference(model.projection_form(), query, gallery)
    standard, custom = graphs(model)
    session = ort.InferenceSession(standard.SerializeToString(), providers=["CPUExecutionProvider"])
    tol = 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(session.run(["scores"], feed(query, gallery))[0], want, rtol=0,
                               atol=tol)
    custom_scores = ReferenceEvaluator(custom, new_ops=[QAConvMatch]).run(
        ["scores"], feed(query, gallery))[0]
    np.testing.assert_allclose(custom_scores, want, rtol=0, atol=tol)


def test_fp16_features_are_scored_in_fp32():
    model = randomized_model(seed=3)
    query = random_features(model, 4, 5, torch.float16)
    gallery = random_features(model, 6, 6, torch.float16)
    ref = model.match({k: v.float() for k, v in query.items()},
                      {k: v.float() for k, v in gallery.items()}).numpy()
    standard, _ = graphs(model, FLOAT16)
    session = ort.InferenceSession(standard.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], feed(query, gallery))[0]
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_custom_node_graph_follows_the_plugin_contract():
    model = randomized_model(seed=4)
    _, custom = graphs(model, FLOAT16)
    onnx.checker.check_model(custom)
    assert {(o.domain, o.version) for o in custom.opset_import} == {("", 18), ("tal", 1)}
    nodes = [n for n in custom.graph.node if n.domain == "tal"]
    k, scales = model.config.num_domains, model.config.scales
    assert len(nodes) == len(scales) * (k + 1)  # one per expert and scale, one per DI scale
    assert not any(n.op_type in ("MatMul", "ReduceMax") and "similarity" in n.output[0]
                   for n in custom.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in custom.graph.initializer}
    hw = {s: h * w for s, (h, w) in model.config.scale_sizes().items()}
    for node in nodes:
        assert node.op_type == "QAConvMatch" and len(node.input) == 4 and len(node.output) == 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_namespace": b"tal", "plugin_version": b"1", "aot": 1}
        wq, wg = inits[node.input[2]], inits[node.input[3]]
        assert wq.dtype == wg.dtype == np.float32 and wq.ndim == 2 and wq.shape == wg.shape
        assert wq.shape[0] in hw.values()
    # MSDA heads also project the attention's hidden units (P = 1 + H); MS heads use P = 1
    assert {inits[n.input[2]].shape[1] > 1 for n in nodes} == {True, False}
    graph_inputs = {i.name: i for i in custom.graph.input}
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
               for i in graph_inputs.values())
    assert custom.graph.output[0].name == "scores"


def test_matchers_carry_the_lowest_ir_version_their_opsets_allow():
    # Not the installed onnx's newest: ONNX Runtime 1.30 refuses IR 14, which onnx 1.23 writes.
    for graph in graphs(randomized_model(seed=5)):
        assert graph.ir_version == helper.find_min_ir_version_for(graph.opset_import,
                                                                  ignore_unknown=True) == 8
