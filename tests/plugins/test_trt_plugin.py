"""The TensorRT plugin module without TensorRT (which cannot be installed here; CI does not
exercise TensorRT): the shape and specialization logic, the ONNX node, and the plugin wiring
run against a stand-in for `tensorrt.plugin` that records what the plugin registers. The AOT
step compiles the real kernel to PTX (Triton ships ptxas)."""
from __future__ import annotations

import importlib.util
import math
import re
from types import SimpleNamespace

import pytest

from tal_infer.errors import TalError
from tal_plugins import trt


class Sym:
    """A dynamic TensorRT dimension (ShapeExpr stand-in) carrying the value it would take at run
    time, so expressions built from it can be checked."""

    def __init__(self, value: int):
        self.value, self.is_constant = value, False

    def __mul__(self, other):
        return Sym(self.value * (other.value if isinstance(other, Sym) else other))

    def constant_value(self):
        raise RuntimeError("not a build-time constant")


class Const(Sym):
    def __init__(self, value: int):
        super().__init__(value)
        self.is_constant = True

    def constant_value(self) -> int:
        return self.value


def fake_tensorrt():
    """(trt, trtp) stand-ins with the documented names the plugin uses; trtp.registry collects
    the decorated functions by kind."""
    registry = {}

    def decorator(kind):
        def outer(plugin_id):
            def inner(fn):
                registry[kind] = (plugin_id, fn)
                return fn
            return inner
        return outer

    class SymIntExprs(list):
        def __init__(self, n):
            super().__init__([None] * n)

    trtp = SimpleNamespace(
        registry=registry, register=decorator("register"), autotune=decorator("autotune"),
        aot_impl=decorator("aot_impl"), TensorDesc=object,
        from_shape_expr=lambda shape, dtype: ("desc", tuple(shape), dtype),
        AutoTuneCombination=lambda io_types, layouts: (io_types, layouts),
        KernelLaunchParams=SimpleNamespace, SymIntExprs=SymIntExprs,
        SymInt32=lambda expr: ("int32", expr.value),
        cdiv=lambda a, b: Sym(math.ceil(a.value / b)))
    trt_module = SimpleNamespace(float16=SimpleNamespace(name="HALF"),
                                 float32=SimpleNamespace(name="FLOAT"))
    return trt_module, trtp


def desc(dims, dtype):
    return SimpleNamespace(shape_expr=[d if isinstance(d, Sym) else Const(d) for d in dims], dtype=dtype)


def test_plugin_registers_shape_types_and_an_aot_kernel():
    pytest.importorskip("triton")
    fake_trt, trtp = fake_tensorrt()
    trt.define_plugin(fake_trt, trtp, arch=80)
    assert {kind: plugin_id for kind, (plugin_id, _) in trtp.registry.items()} == {
        "register": "tal::QAConvMatch", "autotune": "tal::QAConvMatch", "aot_impl": "tal::QAConvMatch"}

    n_q, n_g = Sym(5), Sym(17)  # dynamic batch sizes
    query = desc([n_q, 48, 64], fake_trt.float16)
    gallery = desc([n_g, 48, 64], fake_trt.float16)
    wq, wg = desc([48, 3], fake_trt.float32), desc([48, 3], fake_trt.float32)

    _, describe = trtp.registry["register"]
    kind, shape, dtype = describe(query, gallery, wq, wg)
    assert shape[0] is n_q and shape[1] is n_g and shape[2].constant_value() == 3
    assert dtype is fake_trt.float32

    _, combinations = trtp.registry["autotune"]
    (io_types, layouts), = combinations(query, gallery, wq, wg, None)
    assert io_types.count(",") == 4 and layouts == "LINEAR"  # 4 inputs + 1 output

    _, compile_kernel = trtp.registry["aot_impl"]
    name, ptx, launch, scalars = compile_kernel(query, gallery, wq, wg, None, 0)
    assert re.search(rf"\.entry {name}\(", ptx)
    assert launch.grid_x.value == 5 * math.ceil(17 / 8)  # one program per query x 8 galleries
    assert launch.block_x == 128 and launch.shared_mem <= 48 * 1024
    assert list(scalars) == [("int32", 5), ("int32", 17)]  # the kernel's (n_q, n_g)


def test_kernel_specialization_needs_build_time_sizes():
    sizes = trt.kernel_specialization([Sym(4), 192, 128], [Sym(9), 96, 128], [192, 65], [96, 65])
    assert sizes == (192, 96, 128, 65)
    with pytest.raises(TalError, match="query HW must be fixed"):
        trt.kernel_specialization([Sym(4), Sym(192), 128], [Sym(9), 96, 128], [192, 65], [96, 65])
    with pytest.raises(TalError, match="C = 128 channels but gallery has C = 64"):
        trt.kernel_specialization([4, 192, 128], [9, 96, 64], [192, 65], [96, 65])


def test_onnx_node_names_the_plugin():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = trt.onnx_node("q", "g", "wq", "wg", "scores", name="match_di_res4")
    assert (node.op_type, node.domain) == ("QAConvMatch", "tal")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"tal", "plugin_version": b"1"}
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT16, ["nq", 192, 128]),
              helper.make_tensor_value_info("g", TensorProto.FLOAT16, ["ng", 192, 128])]
    weights = [helper.make_tensor(n, TensorProto.FLOAT, [192, 1], [0.0] * 192) for n in ("wq", "wg")]
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["nq", "ng", 1])
    model = helper.make_model(helper.make_graph([node], "m", inputs, [output], weights),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tal", 1)])
    onnx.checker.check_model(model)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_register_without_tensorrt_is_a_clear_error():
    with pytest.raises(TalError, match=r"tal::QAConvMatch needs TensorRT 10 \(pip install 'tal-reid\[trt\]'\)"):
        trt.register()
