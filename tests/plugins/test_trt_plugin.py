"""The TensorRT plugin without TensorRT (which cannot run here; CI does not exercise it).
The plugin is defined through NVIDIA's own `tensorrt.plugin` sources (the oldest and newest
10.x the `trt` extra allows) over a stand-in of TensorRT's compiled core, and built as
TensorRT's builder builds an AOT plugin (fake_tensorrt_plugin.py): the real kernel is compiled
to PTX for sm_90a with the installed Triton, and the PTX TensorRT would embed is checked against
how TensorRT launches it (parameter list, ISA version; ptxas assembles it).

No postponed annotations here: TensorRT's validator inspects annotation objects."""
import importlib.util
import inspect
import math
import re
import sys
from types import SimpleNamespace

import pytest

from tal_infer.errors import TalError
from tal_plugins import ptx as ptx_text
from tal_plugins import trt, tuning

import fake_tensorrt_plugin as nvidia

SM90 = trt.AotTarget(90, (8, 4), "test")
PLUGIN = "tal::QAConvMatch"


@pytest.fixture(params=[nvidia.OLDEST, nvidia.NEWEST])
def tensorrt(request, monkeypatch):
    """(tensorrt, tensorrt.plugin) of one release: NVIDIA's plugin layer over the core stand-in,
    with a fresh registry and trt.register() as in a new process on a GPU of capability 9.0."""
    folder = nvidia.plugin_sources(request.param)
    if folder is None:
        pytest.skip(f"NVIDIA's tensorrt.plugin sources {request.param} are not installed: pip "
                    f"install --no-deps --target .cache/tensorrt-bindings-{request.param} "
                    f"tensorrt-cu12-bindings=={request.param}")
    modules = nvidia.load(monkeypatch, request.param, folder)
    monkeypatch.setattr(trt, "_STAGES_DONE", set())
    monkeypatch.setattr(trt, "_REGISTRATION", None)
    monkeypatch.setattr(trt, "_current_arch", lambda: 90)
    return modules


def registry() -> dict:
    return sys.modules["tensorrt.plugin._lib"].QDP_REGISTRY


def qaconv_inputs(trt_module, dtype, hw=48, c=64, p=3) -> list:
    """query [Nq, HW, C], gallery [Ng, HW, C], wq / wg [HW, P]; Nq and Ng dynamic."""
    return [(dtype, ["nq", hw, c]), (dtype, ["ng", hw, c]),
            (trt_module.DataType.FLOAT, [hw, p]), (trt_module.DataType.FLOAT, [hw, p])]


@pytest.fixture(scope="module")
def raw_kernel():
    """Triton's own output for one specialization, before it is fitted for TensorRT."""
    pytest.importorskip("triton")
    from tal_plugins import kernel

    compiled, _ = kernel.compile_ptx("fp16", 48, 48, 64, 3, arch=90)
    return compiled


# -- NVIDIA's rules, as the plugin relies on them -------------------------------------------------

def _describe(query: "TensorDesc") -> "TensorDesc":  # noqa: F821  (string annotations)
    return query


def test_tensorrt_rules_reject_what_the_plugin_avoids(tensorrt):
    trt_module, trtp = tensorrt
    with pytest.raises(TypeError, match="must be a class"):
        trtp.register("tal::strings")(_describe)  # why trt.py has no postponed annotations

    def describe(query: trtp.TensorDesc) -> trtp.TensorDesc:
        return query

    trtp.register("tal::op")(describe)
    with pytest.raises(ValueError, match="already has a defintion"):  # why registration is staged
        trtp.register("tal::op")(describe)

    def aot_without_annotation(query, outputs, tactic):
        return None

    with pytest.raises(ValueError, match="No return annotation found for aot_impl function"):
        trtp.aot_impl("tal::op")(aot_without_annotation)

    def aot_wrong_return(query, outputs, tactic) -> tuple[str, str, int, trtp.SymIntExprs]:
        return None

    with pytest.raises(ValueError, match="index 2"):
        trtp.aot_impl("tal::op")(aot_wrong_return)
    with pytest.raises(ValueError, match="Both arguments cannot be 'int's"):
        trtp.cdiv(4, 2)
    with pytest.raises(AttributeError):
        trtp.KernelLaunchParams().threads = 128
    # Extra kernel arguments must be SymInt32: SymIntExprs stores a plain int as a SymIntExpr,
    # which the build then refuses (why trt.py wraps Nq and Ng in SymInt32).
    scalars = trtp.SymIntExprs(1)
    scalars[0] = 5
    assert type(scalars[0]) is not trtp.SymInt32


# -- TensorRT accepts the definition; a build gets kernels it can launch --------------------------

def test_plugin_builds_under_tensorrts_rules_with_the_table_config(tensorrt):
    pytest.importorskip("triton")
    trt_module, trtp = tensorrt
    registration = trt.Registration(SM90)
    trt.define_plugin(trt_module, trtp, registration, set())
    plugin = registry()[PLUGIN]
    assert plugin.input_tensor_names == ["query", "gallery", "wq", "wg"]
    assert plugin.num_outputs == 1
    annotation = inspect.signature(plugin.aot_impl_func).return_annotation
    assert str(annotation).startswith("tuple[str | bytes, str | bytes")

    build = nvidia.AotBuild(trt_module, PLUGIN)
    kernels = build.run(qaconv_inputs(trt_module, trt_module.DataType.HALF), {"nq": 5, "ng": 17})
    half, single = trt_module.DataType.HALF, trt_module.DataType.FLOAT
    assert [k.types for k in kernels] == [[half, half, single, single, single], [single] * 5]
    for k in kernels:
        name, params = ptx_text.entry_params(k.ptx)
        assert name == k.name
        # TensorRT passes inputs, extra scalars, outputs -- nothing else
        assert len(params) == k.launch_arguments == 7
        assert [p.is_pointer for p in params] == [True] * 4 + [False] * 2 + [True]
        # the ISA is capped to the target's limit; the target is the build GPU's
        assert ptx_text.isa_version(k.ptx) == (8, 4)
        assert re.search(r"^\.target sm_90a\b", k.ptx, re.M)
        assert k.grid == (5 * math.ceil(17 / 16), 1, 1)  # one program per query x 16 galleries
        assert k.block == (256, 1, 1) and k.shared_mem <= 48 * 1024
        assert k.extra_args == [5, 17]  # the kernel's (n_q, n_g), int32
        assert [t.name for t in k.extra_arg_types] == ["INT32", "INT32"]
    assert [(k["dtype"], k["ptx_isa"]) for k in registration.kernels] == [("fp16", "8.4"),
                                                                          ("fp32", "8.4")]
    # The plan's launch config is the table's, as the run-time launcher takes it on sm90; the
    # manifest records it with its source, threads and shared memory.
    for record, k in zip(registration.kernels, kernels):
        key = tuning.TuningKey("sm90", 48, 48, 64, 3, record["dtype"])
        assert record["launch_config"] == {**tuning.table_config(key).kernel_args(),
                                           "source": "table"}
        assert tuning.choose(key, "any GPU without a tuning cache")[0] == tuning.table_config(key)
        assert (record["threads"], record["shared_bytes"]) == (k.block[0], k.shared_mem)


# -- Triton's scratch parameters ------------------------------------------------------------------

def test_scratch_parameters_are_removed_only_when_unused(raw_kernel):
    raw = raw_kernel.asm["ptx"]
    _, params = ptx_text.entry_params(raw)
    assert len(params) >= 7  # Triton >= 3.3 appends scratch pointers (3.9: two)
    fitted = trt.fit_for_tensorrt(raw, raw_kernel.metadata, SM90)
    _, kept = ptx_text.entry_params(fitted)
    assert [p.name for p in kept] == [p.name for p in params[:7]]
    if len(params) > 7:  # a kernel that needs scratch memory cannot run under TensorRT
        needy = SimpleNamespace(global_scratch_size=256, profile_scratch_size=0)
        with pytest.raises(TalError, match="scratch memory .*global_scratch_size = 256"):
            trt.fit_for_tensorrt(raw, needy, SM90)
    used = raw.replace("ret;", f"ld.param.u64 %rd1, [{params[-1].name}];\n\tret;", 1)
    if len(params) > 7:
        with pytest.raises(TalError, match="read by the kernel body"):
            ptx_text.drop_trailing_params(used, 7)


def test_kernel_with_another_argument_layout_is_refused(raw_kernel):
    raw = raw_kernel.asm["ptx"]
    name, params = ptx_text.entry_params(raw)
    swapped = raw.replace(f".param .u32 {params[4].name}", f".param .u64 {params[4].name}", 1)
    with pytest.raises(TalError, match="not the \\(4 pointers, 2 int32, 1 pointer\\)"):
        trt.fit_for_tensorrt(swapped, raw_kernel.metadata, SM90)


# -- PTX ISA version -------------------------------------------------------------------------------

def test_ptx_isa_is_capped_and_still_assembles(raw_kernel):
    raw = raw_kernel.asm["ptx"]
    emitted = ptx_text.isa_version(raw)
    oldest = trt.fit_for_tensorrt(raw, raw_kernel.metadata, trt.AotTarget(90, (8, 0), "test"))
    assert ptx_text.isa_version(oldest) == (8, 0)  # sm_90a's first ISA; ptxas accepted it
    roomy = trt.fit_for_tensorrt(raw, raw_kernel.metadata, trt.AotTarget(90, (9, 9), "test"))
    assert ptx_text.isa_version(roomy) == emitted  # never raised above what Triton emitted
    with pytest.raises(TalError, match="does not assemble at PTX ISA 7.8 for sm_90a"):
        ptx_text.check_assembles(ptx_text.with_isa_version(oldest, (7, 8)), 90)


def test_ptx_isa_limit_from_option_or_driver():
    assert trt.aot_target(90, "8.4").max_isa == (8, 4)
    target = trt.aot_target(90, driver_cuda=lambda: (12, 4))
    assert (target.max_isa, target.isa_source) == ((8, 4), "driver (CUDA 12.4)")
    assert trt.aot_target(90, driver_cuda=lambda: (12, 9)).max_isa == (8, 8)
    assert trt.aot_target(90, driver_cuda=lambda: (13, 0)).max_isa == (9, 0)
    assert trt.aot_target(80, driver_cuda=lambda: (11, 8)).max_isa == (7, 8)
    with pytest.raises(TalError, match="no NVIDIA driver found .* pass --ptx-isa"):
        trt.aot_target(90, driver_cuda=lambda: None)
    with pytest.raises(TalError, match=r"sm_90a kernels need PTX ISA >= 8.0, but driver "
                                       r"\(CUDA 11.8\) allows only 7.8"):
        trt.aot_target(90, driver_cuda=lambda: (11, 8))
    with pytest.raises(TalError, match="not of the form MAJOR.MINOR"):
        trt.aot_target(90, "eight")


# -- registration --------------------------------------------------------------------------------

def test_failed_registration_can_be_retried(tensorrt, monkeypatch):
    pytest.importorskip("triton")
    trt_module, trtp = tensorrt
    real = trtp.aot_impl
    failures = []

    def aot_impl_failing_once(plugin_id):
        if not failures:
            failures.append(plugin_id)
            raise ValueError("injected failure in aot_impl")
        return real(plugin_id)

    monkeypatch.setattr(trtp, "aot_impl", aot_impl_failing_once)  # TensorRT rejects it once
    with pytest.raises(ValueError, match="injected failure in aot_impl"):
        trt.register(ptx_isa="8.4")
    registration = trt.register(ptx_isa="8.4")  # no "already has a definition"
    assert trt.register(ptx_isa="8.4") is registration
    assert registration.target == trt.AotTarget(90, (8, 4), "--ptx-isa 8.4")
    plugin = registry()[PLUGIN]
    assert plugin.autotune_func is not None and plugin.aot_impl_func is not None
    with pytest.raises(TalError, match="already registered in this process for sm_90a"):
        trt.register(ptx_isa="8.0")


def test_registration_problems_are_one_line_before_tensorrt_is_touched(tensorrt, monkeypatch):
    monkeypatch.setattr(trt, "triton_available", lambda: False)
    with pytest.raises(TalError, match=r"compiles its kernel with Triton, which is not "
                                       r"installed \(pip install 'tal-reid\[gpu\]'\)"):
        trt.register(ptx_isa="8.4")
    monkeypatch.setattr(trt, "triton_available", lambda: True)
    with pytest.raises(TalError, match="PTX ISA >= 8.0"):
        trt.register(ptx_isa="7.5")
    assert registry() == {}  # nothing half-registered


def test_tensorrt_older_than_10_9_is_refused(monkeypatch):
    folder = nvidia.plugin_sources(nvidia.NEWEST) or nvidia.plugin_sources(nvidia.OLDEST)
    if folder is None:
        pytest.skip("NVIDIA's tensorrt.plugin sources are not installed")
    nvidia.load(monkeypatch, "10.8.0.43", folder)
    with pytest.raises(TalError, match=r"TensorRT 10.8.0.43 is too old .* >= 10.9"):
        trt.register()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_register_without_tensorrt_is_a_clear_error():
    with pytest.raises(TalError, match=r"tal::QAConvMatch needs TensorRT >= 10.9 \(pip install "
                                       r"'tal-reid\[trt\]'\)"):
        trt.register()


# -- shapes and the ONNX node ---------------------------------------------------------------------

def test_kernel_specialization_needs_build_time_sizes(tensorrt):
    _, trtp = tensorrt
    builder = nvidia.IExprBuilder()

    def dims(*values):
        return [trtp.ShapeExpr(nvidia.IDimensionExpr(name=v) if isinstance(v, str)
                               else builder.constant(v)) for v in values]

    sizes = trt.kernel_specialization(dims("nq", 192, 128), dims("ng", 96, 128), dims(192, 65),
                                      dims(96, 65))
    assert sizes == (192, 96, 128, 65)
    with pytest.raises(TalError, match="query HW must be fixed"):
        trt.kernel_specialization(dims("nq", "hw", 128), dims("ng", 96, 128), dims(192, 65),
                                  dims(96, 65))
    with pytest.raises(TalError, match="C = 128 channels but gallery has C = 64"):
        trt.kernel_specialization([4, 192, 128], [9, 96, 64], [192, 65], [96, 65])


def test_onnx_node_names_the_plugin():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = trt.onnx_node("q", "g", "wq", "wg", "scores", name="match_di_res4")
    assert (node.op_type, node.domain) == ("QAConvMatch", "tal")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"tal", "plugin_version": b"1", "aot": 1}
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT16, ["nq", 192, 128]),
              helper.make_tensor_value_info("g", TensorProto.FLOAT16, ["ng", 192, 128])]
    weights = [helper.make_tensor(n, TensorProto.FLOAT, [192, 1], [0.0] * 192) for n in ("wq", "wg")]
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["nq", "ng", 1])
    model = helper.make_model(helper.make_graph([node], "m", inputs, [output], weights),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tal", 1)])
    onnx.checker.check_model(model)
