"""The TensorRT plugin without TensorRT (which cannot be installed here; CI does not exercise
TensorRT). The plugin is defined against a strict stand-in of `tensorrt.plugin` that applies
TensorRT's own rules (fake_tensorrt_plugin.py) and then built as an engine build would: the
real kernel is compiled to PTX for sm_90a with the installed Triton, and the PTX TensorRT
would embed is checked against how TensorRT launches it (parameter list, ISA version; ptxas
assembles it).

No postponed annotations here: the stand-in, like TensorRT, inspects annotation objects."""
import importlib.util
import inspect
import math
import re
from types import SimpleNamespace

import pytest

from tal_infer.errors import TalError
from tal_plugins import ptx as ptx_text
from tal_plugins import trt, tuning

from fake_tensorrt_plugin import FakeAotBuild, dims, fake_tensorrt, install

# query [Nq, HW, C], gallery [Ng, HW, C], wq / wg [HW, P] with dynamic Nq = 5, Ng = 17
SHAPES = [dims(("dyn", 5), 48, 64), dims(("dyn", 17), 48, 64), dims(48, 3), dims(48, 3)]
SM90 = trt.AotTarget(90, (8, 4), "test")


def define(target=SM90, trt_pair=None):
    fake_trt, trtp = trt_pair or fake_tensorrt()
    registration = trt.Registration(target)
    trt.define_plugin(fake_trt, trtp, registration, set())
    return trtp, registration


@pytest.fixture(scope="module")
def raw_kernel():
    """Triton's own output for one specialization, before it is fitted for TensorRT."""
    pytest.importorskip("triton")
    from tal_plugins import kernel

    compiled, _ = kernel.compile_ptx("fp16", 48, 48, 64, 3, arch=90)
    return compiled


# -- the stand-in is as strict as TensorRT ------------------------------------------------------

def _describe(query: "TensorDesc") -> "TensorDesc":  # noqa: F821  (string annotations)
    return query


def test_stand_in_rejects_what_tensorrt_rejects():
    fake_trt, trtp = fake_tensorrt()
    with pytest.raises(TypeError, match="must be a class"):
        trtp.register("tal::strings")(_describe)

    def describe(query: trtp.TensorDesc) -> trtp.TensorDesc:
        return query

    trtp.register("tal::op")(describe)
    with pytest.raises(ValueError, match="already has a defintion"):
        trtp.register("tal::op")(describe)
    with pytest.raises(ValueError, match="reserved|invalid"):
        trtp.register("trt::op")(describe)

    def aot_without_annotation(query, outputs, tactic):  # today's plugins/trt.py did this
        return None

    with pytest.raises(ValueError, match="No return annotation found for aot_impl function"):
        trtp.aot_impl("tal::op")(aot_without_annotation)

    def aot_wrong_names(query, outputs) -> tuple[str, str, trtp.KernelLaunchParams,
                                                 trtp.SymIntExprs]:
        return None

    with pytest.raises(ValueError, match="does not match the expected input arg schema"):
        trtp.aot_impl("tal::op")(aot_wrong_names)

    def aot_wrong_return(query, outputs, tactic) -> tuple[str, str, int, trtp.SymIntExprs]:
        return None

    with pytest.raises(ValueError, match="index 2"):
        trtp.aot_impl("tal::op")(aot_wrong_return)
    with pytest.raises(ValueError, match="Both arguments cannot be 'int's"):
        trtp.cdiv(4, 2)
    with pytest.raises(AttributeError):
        trtp.KernelLaunchParams().threads = 128


# -- item 1: TensorRT accepts the definition; a build gets kernels it can launch ----------------

def test_plugin_definition_follows_tensorrt_rules_and_builds():
    pytest.importorskip("triton")
    trtp, registration = define()
    plugin = trtp.registry["tal::QAConvMatch"]
    assert plugin.inputs == ["query", "gallery", "wq", "wg"] and plugin.num_outputs == 1
    annotation = inspect.signature(plugin.aot_impl_func).return_annotation
    assert str(annotation).startswith("tuple[str | bytes, str | bytes")

    kernels = FakeAotBuild(trtp, "tal::QAConvMatch").run(SHAPES)
    assert [k.types for k in kernels] == [["FP16", "FP16", "FP32", "FP32", "FP32"],
                                         ["FP32", "FP32", "FP32", "FP32", "FP32"]]
    for k in kernels:
        name, params = ptx_text.entry_params(k.ptx)
        assert name == k.name
        # item 2: TensorRT passes inputs, extra scalars, outputs -- nothing else
        assert len(params) == k.launch_arguments == 7
        assert [p.is_pointer for p in params] == [True] * 4 + [False] * 2 + [True]
        # item 3: the ISA is capped to the target's limit; the target is the build GPU's
        assert ptx_text.isa_version(k.ptx) == (8, 4)
        assert re.search(r"^\.target sm_90a\b", k.ptx, re.M)
        assert k.grid == (5 * math.ceil(17 / 16), 1, 1)  # one program per query x 16 galleries
        assert k.block == (256, 1, 1) and k.shared_mem <= 48 * 1024
        assert k.extra_args == [5, 17]  # the kernel's (n_q, n_g)
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


# -- item 2: Triton's scratch parameters ---------------------------------------------------------

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


# -- item 3: PTX ISA version ----------------------------------------------------------------------

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


# -- item 8: registration ------------------------------------------------------------------------

@pytest.fixture()
def fresh_process(monkeypatch):
    """trt.register as in a new process, with the stand-in installed and a GPU of capability 9.0."""
    fake_trt, trtp = fake_tensorrt()
    install(monkeypatch, fake_trt, trtp)
    monkeypatch.setattr(trt, "_STAGES_DONE", set())
    monkeypatch.setattr(trt, "_REGISTRATION", None)
    monkeypatch.setattr(trt, "_current_arch", lambda: 90)
    return fake_trt, trtp


def test_failed_registration_can_be_retried(fresh_process):
    pytest.importorskip("triton")
    _, trtp = fresh_process
    trtp.fail_next = "aot_impl"  # TensorRT rejects the last step once
    with pytest.raises(ValueError, match="injected failure in aot_impl"):
        trt.register(ptx_isa="8.4")
    registration = trt.register(ptx_isa="8.4")  # no "already has a definition"
    assert trt.register(ptx_isa="8.4") is registration
    assert registration.target == trt.AotTarget(90, (8, 4), "--ptx-isa 8.4")
    plugin = trtp.registry["tal::QAConvMatch"]
    assert plugin.autotune_func is not None and plugin.aot_impl_func is not None
    with pytest.raises(TalError, match="already registered in this process for sm_90a"):
        trt.register(ptx_isa="8.0")


def test_registration_problems_are_one_line_before_tensorrt_is_touched(fresh_process,
                                                                       monkeypatch):
    _, trtp = fresh_process
    monkeypatch.setattr(trt, "triton_available", lambda: False)
    with pytest.raises(TalError, match=r"compiles its kernel with Triton, which is not "
                                       r"installed \(pip install 'tal-reid\[gpu\]'\)"):
        trt.register(ptx_isa="8.4")
    monkeypatch.setattr(trt, "triton_available", lambda: True)
    with pytest.raises(TalError, match="PTX ISA >= 8.0"):
        trt.register(ptx_isa="7.5")
    assert trtp.registry == {}  # nothing half-registered


def test_tensorrt_older_than_10_9_is_refused(monkeypatch):
    fake_trt, trtp = fake_tensorrt("10.8.0.43")
    install(monkeypatch, fake_trt, trtp)
    with pytest.raises(TalError, match=r"TensorRT 10.8.0.43 is too old .* >= 10.9"):
        trt.register()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_register_without_tensorrt_is_a_clear_error():
    with pytest.raises(TalError, match=r"tal::QAConvMatch needs TensorRT >= 10.9 \(pip install "
                                       r"'tal-reid\[trt\]'\)"):
        trt.register()


# -- shapes and the ONNX node ---------------------------------------------------------------------

def test_kernel_specialization_needs_build_time_sizes():
    sizes = trt.kernel_specialization(dims(("dyn", 4), 192, 128), dims(("dyn", 9), 96, 128),
                                      dims(192, 65), dims(96, 65))
    assert sizes == (192, 96, 128, 65)
    with pytest.raises(TalError, match="query HW must be fixed"):
        trt.kernel_specialization(dims(("dyn", 4), ("dyn", 192), 128), dims(("dyn", 9), 96, 128),
                                  dims(192, 65), dims(96, 65))
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
