"""matcher_trt.onnx in a real runtime: ONNX Runtime parses the graph with its
`tal::QAConvMatch` nodes and runs them as a Python custom op (onnxruntime-extensions, the `test`
extra) implemented by tal_plugins; the scores must equal matcher.onnx's (standard ops). This
checks what TensorRT's parser receives: the node's wiring, input order, shapes, dtypes and
attributes.

onnxruntime-extensions serves Python ops from one fixed domain, so the test renames the `tal`
domain to it in a copy of the graph; nothing else changes. Its Python ops take no fp16 tensors,
so the fp32 graph runs (the fp16 graph differs only in the features' element type; its node
contract is checked in test_matcher.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tal_plugins import qaconv_match
from tal_plugins import trt as plugin

from test_matcher import HEADS, feed, graphs, random_features
from tiny_models import randomized_model

ortx = pytest.importorskip("onnxruntime_extensions")
F32, STRING, INT64 = (ortx.PyCustomOpDef.dt_float, ortx.PyCustomOpDef.dt_string,
                      ortx.PyCustomOpDef.dt_int64)
CALLS: list[dict] = []


@ortx.onnx_op(op_type=plugin.PLUGIN_NAME, inputs=[F32, F32, F32, F32], outputs=[F32],
              attrs={"plugin_namespace": STRING, "plugin_version": STRING, "aot": INT64})
def qaconv_match_node(query, gallery, wq, wg, **attrs):
    """The plugin's contract (plugins/README.md) checked on what the runtime passes, then the op."""
    CALLS.append({"shapes": [query.shape, gallery.shape, wq.shape, wg.shape],
                  "dtypes": {str(a.dtype) for a in (query, gallery, wq, wg)}, "attrs": attrs})
    return qaconv_match(query, gallery, wq, wg)


def in_extensions_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.domain == plugin.ONNX_DOMAIN:
            node.domain = ortx.default_opset_domain()
    for opset in copy.opset_import:
        if opset.domain == plugin.ONNX_DOMAIN:
            opset.domain = ortx.default_opset_domain()
    return copy


@pytest.mark.parametrize("name", ["msda", "di-only"])
def test_custom_node_graph_runs_in_onnxruntime_with_the_same_scores(name):
    model = randomized_model(seed=21 + len(name), **HEADS[name])
    query, gallery = random_features(model, 5, 1), random_features(model, 7, 2)
    standard, custom = graphs(model)
    options = ort.SessionOptions()
    options.register_custom_ops_library(ortx.get_library_path())
    want = ort.InferenceSession(standard.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(["scores"], feed(query, gallery))[0]
    CALLS.clear()
    got = ort.InferenceSession(in_extensions_domain(custom).SerializeToString(), options,
                               providers=["CPUExecutionProvider"]).run(
        ["scores"], feed(query, gallery))[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())

    nodes = [n for n in custom.graph.node if n.domain == plugin.ONNX_DOMAIN]
    assert len(CALLS) == len(nodes) > 0
    hw = {h * w for h, w in model.config.scale_sizes().values()}
    for call in CALLS:
        (nq, hwq, c), (ng, hwg, c2), (hwq2, p), (hwg2, p2) = call["shapes"]
        assert (nq, ng) == (5, 7) and c == c2 == model.config.neck_channels
        assert hwq == hwq2 and hwg == hwg2 and hwq in hw and p == p2
        assert call["dtypes"] == {"float32"}
        assert call["attrs"] == {"plugin_namespace": "tal", "plugin_version": "1", "aot": 1}
