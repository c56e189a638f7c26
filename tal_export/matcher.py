"""The matcher graphs: query and gallery feature sets -> scores [Nq, Ng] (docs/bundle.md).

Both graphs are built directly from the projection form (`TALModel.projection_form`, the same
arrays as heads.npz) and emit, as graph nodes, the score formulas whose one home is
`tal_infer.heads` (the tests check the graphs against it), so matcher.onnx, matcher_trt.onnx and
the runtime's fused path compute one formula from one set of numbers. They differ only in how a projection call
``r = qaconv_match(Q, G, wq, wg)`` is emitted:

* ``matcher.onnx`` (standard ONNX ops, any ONNX Runtime): per (stream, scale) one batched MatMul
  over all experts giving the similarity maps ``[K, Nq*HW, Ng*HW]``, two ReduceMax and two
  MatMuls with the projections. Memory grows as K * Nq * Ng * HW^2 fp32 values, so callers feed
  it in query/gallery chunks (the runtime does).
* ``matcher_trt.onnx``: one ``tal::QAConvMatch`` node per (stream, scale, expert), the contract
  of plugins/README.md, resolved by the TensorRT plugin of tal_plugins.

Everything after the projections (MSDA attention, softmax, the score affines) is fp32; fp16
feature inputs are cast to fp32 before the standard MatMul (the plugin takes fp16 directly and
accumulates in fp32, as its contract says).

A DI stream is treated as one expert (K = 1), so both streams share one code path.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from tal_infer.features import MATCHER_SIDES, feature_name, matcher_input
from tal_infer.heads import AFFINE, SCALE_ARRAYS, array_key
from tal_infer.precision import Precision
from tal_plugins import trt as plugin


class GraphBuilder:
    """Collects nodes and initializers with unique names (reduce ops follow the opset's form)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        """ReduceMax/Mean/Sum with axes as input (opset >= 18; ReduceSum since 13) or attribute."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.const("axes", axes, np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)


Emitter = Callable[[GraphBuilder, str, str, np.ndarray, np.ndarray, int, int], str]


def standard_projections(g: GraphBuilder, q: str, gal: str, wq: np.ndarray, wg: np.ndarray,
                         hw: int, channels: int) -> str:
    """r [K, Nq, Ng, P] from q, gal [N, K, HW, C] with standard ops (wq, wg [K, HW, P])."""
    k = wq.shape[0]
    q = g.op("Cast", [q], to=TensorProto.FLOAT)
    gal = g.op("Cast", [gal], to=TensorProto.FLOAT)
    qk = g.op("Transpose", [q], perm=[1, 0, 2, 3])                        # [K, Nq, HW, C]
    qk = g.op("Reshape", [qk, g.const("shape", [k, -1, channels], np.int64)])  # [K, Nq*HW, C]
    gk = g.op("Transpose", [gal], perm=[1, 3, 0, 2])                      # [K, C, Ng, HW]
    gk = g.op("Reshape", [gk, g.const("shape", [k, 0, -1], np.int64)])    # [K, C, Ng*HW]
    sim = g.op("MatMul", [qk, gk], hint="similarity")                     # [K, Nq*HW, Ng*HW]
    n_g = g.op("Shape", [gal], start=0, end=1)
    shape = g.op("Concat", [g.const("dims", [k, -1, hw], np.int64), n_g,
                            g.const("dims", [hw], np.int64)], axis=0)
    sim = g.op("Reshape", [sim, shape])                                   # [K, Nq, HW, Ng, HW]
    best_g = g.reduce("ReduceMax", sim, [4])                              # [K, Nq, HWq, Ng]
    best_g = g.op("Transpose", [best_g], perm=[0, 1, 3, 2])               # [K, Nq, Ng, HWq]
    best_q = g.reduce("ReduceMax", sim, [2])                              # [K, Nq, Ng, HWg]
    rq = g.op("MatMul", [best_g, g.const("wq", wq[:, None])])             # [K, Nq, Ng, P]
    rg = g.op("MatMul", [best_q, g.const("wg", wg[:, None])])
    return g.op("Add", [rq, rg], hint="projections")


def plugin_projections(g: GraphBuilder, q: str, gal: str, wq: np.ndarray, wg: np.ndarray,
                       hw: int, channels: int) -> str:
    """r [K, Nq, Ng, P]: one tal::QAConvMatch node per expert (plugins/README.md contract)."""
    parts = []
    for i in range(wq.shape[0]):
        index = g.const("expert", i, np.int64)
        qi = g.op("Gather", [q, index], axis=1)                           # [Nq, HW, C]
        gi = g.op("Gather", [gal, index], axis=1)
        out = g.name("qaconv_match")
        g.nodes.append(plugin.onnx_node(qi, gi, g.const("wq", wq[i]), g.const("wg", wg[i]), out,
                                        name=f"n_{out}"))
        parts.append(g.op("Unsqueeze", [out, g.const("axes", [0], np.int64)]))
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0)


def _match_layout(g: GraphBuilder, x: str, experts: int, channels: int, hw: int) -> str:
    """[N, K, C, h, w] (or [N, C, h, w] as K = 1) -> [N, K, HW, C]."""
    x = g.op("Reshape", [x, g.const("shape", [-1, experts, channels, hw], np.int64)])
    return g.op("Transpose", [x], perm=[0, 1, 3, 2])


def _stream_z(g: GraphBuilder, mode: str, r: str, arrays: dict, stream: str, scale: str) -> str:
    """z [Nq, Ng] of one scale from r [K, Nq, Ng, P] (`tal_infer.heads.scale_z` as nodes)."""
    if mode not in SCALE_ARRAYS:
        raise ValueError(f"unknown matching mode {mode!r}")
    score_col = g.op("Slice", [r, g.const("start", [0], np.int64), g.const("end", [1], np.int64),
                               g.const("axis", [3], np.int64)])          # [K, Nq, Ng, 1]
    if mode in ("ms", "mean"):
        return g.reduce("ReduceMean", score_col, [0, 3])
    hidden = g.op("Slice", [r, g.const("start", [1], np.int64),
                            g.const("end", [np.iinfo(np.int64).max], np.int64),
                            g.const("axis", [3], np.int64)])              # [K, Nq, Ng, H]
    b1, w2, b2 = (arrays[array_key(stream, scale, k)] for k in ("b1", "w2", "b2"))
    hidden = g.op("Add", [g.reduce("ReduceSum", hidden, [0]), g.const("b1", b1)])
    logits = g.op("MatMul", [g.op("Relu", [hidden]), g.const("w2t", w2.T)])
    alpha = g.op("Softmax", [g.op("Add", [logits, g.const("b2", b2)])], axis=-1)
    alpha = g.op("Transpose", [alpha], perm=[2, 0, 1])                    # [K, Nq, Ng]
    weighted = g.op("Mul", [alpha, g.reduce("ReduceSum", score_col, [3])])
    return g.reduce("ReduceSum", weighted, [0])


def build_matcher(projection_form: dict, feature_specs: dict[str, dict], precision: Precision,
                  opset: int, custom_op: bool = False) -> ModelProto:
    """The matcher graph (standard ops, or tal::QAConvMatch nodes with ``custom_op``) taking
    features in ``precision``.

    ``feature_specs``: manifest ``features`` section (``shape`` [-1, (K,) C, h, w] per output).
    """
    matching, arrays = projection_form["matching"], projection_form["arrays"]
    g = GraphBuilder(opset)
    emit: Emitter = plugin_projections if custom_op else standard_projections
    inputs, total = [], None
    for stream in matching["score"]:
        mode, z = matching["streams"][stream]["mode"], None
        for scale in matching["scales"]:
            shape = feature_specs[feature_name(stream, scale)]["shape"]
            experts = shape[1] if len(shape) == 5 else 1
            channels, hw = shape[-3], shape[-2] * shape[-1]
            names = [matcher_input(side, feature_name(stream, scale)) for side in MATCHER_SIDES]
            inputs += [helper.make_tensor_value_info(n, precision.onnx_type,
                                                     [f"n_{side}", *shape[1:]])
                       for n, side in zip(names, MATCHER_SIDES)]
            q, gal = (_match_layout(g, n, experts, channels, hw) for n in names)
            wq, wg = (arrays[array_key(stream, scale, k)] for k in ("wq", "wg"))
            if wq.ndim == 2:
                wq, wg = wq[None], wg[None]
            r = emit(g, q, gal, wq, wg, hw, channels)
            zl = _stream_z(g, mode, r, arrays, stream, scale)
            z = zl if z is None else g.op("Add", [z, zl])
        a, b = arrays[array_key(stream, None, AFFINE)]
        score = g.op("Add", [g.op("Mul", [z, g.const("A", a)]), g.const("B", b)],
                     hint=f"score_{stream}")
        total = score if total is None else g.op("Add", [total, score])
    g.nodes.append(helper.make_node("Identity", [total], ["scores"], name="n_scores"))
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n_query", "n_gallery"])
    graph = helper.make_graph(g.nodes, "tal_matcher_trt" if custom_op else "tal_matcher",
                              inputs, [output], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    if custom_op:
        opsets.append(helper.make_opsetid(plugin.ONNX_DOMAIN, 1))
    # The lowest IR version these opsets need, not the installed onnx's newest (onnx 1.23 writes
    # IR 14, which ONNX Runtime 1.30 refuses to load).
    return helper.make_model(graph, opset_imports=opsets, producer_name="tal-reid",
                             ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True))
