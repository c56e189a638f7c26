"""TensorRT plugin `tal::QAConvMatch` (DESIGN.md section 4), backed by the Triton kernel.

Written against TensorRT 10's Python "quickly deployable plugin" API (`tensorrt.plugin`):
`@trtp.register` gives the output descriptor (shape [Nq, Ng, P], fp32), `@trtp.autotune` the
supported types (query and gallery both fp16 or both fp32; wq, wg fp32), and `@trtp.aot_impl`
the kernel: the Triton kernel of plugins/kernel.py compiled ahead of time to PTX for the build
GPU, with HW, C and P baked in and Nq, Ng passed as the two scalar arguments. TensorRT embeds the
PTX in the engine, so a built engine runs without Python, Triton or torch.

This module stays thin: the shape function is plugins/shapes.py (checked once the sizes are
build-time ints, in the AOT step), the kernel and its launch
geometry are plugins/kernel.py, and `define_plugin` takes the tensorrt modules as arguments so
the wiring is testable where TensorRT is not installed (CI does not exercise TensorRT).

ONNX: TensorRT's parser maps a node whose op_type equals a registered plugin name to that
plugin; the namespace comes from the node's `plugin_namespace` attribute (TensorRT 10.10+ also
read it from the node's domain), the version from `plugin_version` (default "1"). `onnx_node`
builds such a node.
"""
import functools
from typing import Any, Sequence

from .errors import TalError

from .shapes import check_match_shapes, match_output_dims

PLUGIN_NAMESPACE = "tal"
PLUGIN_NAME = "QAConvMatch"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ONNX_DOMAIN = "tal"
# Positions: query, gallery, wq, wg, out. '|' alternatives are dependent: query and gallery are
# both FP16 or both FP32; the projections and the output are always FP32.
IO_TYPES = "FP16|FP32,FP16|FP32,FP32|FP32,FP32|FP32,FP32|FP32"
TRT_DTYPE_NAMES = {"HALF": "fp16", "FLOAT": "fp32"}


def onnx_node(query: str, gallery: str, wq: str, wg: str, output: str, name: str | None = None):
    """An ONNX NodeProto `tal::QAConvMatch(query, gallery, wq, wg) -> output` that TensorRT's
    parser resolves to this plugin (needs the `onnx` package: export side only)."""
    from onnx import helper

    return helper.make_node(PLUGIN_NAME, [query, gallery, wq, wg], [output], name=name,
                            domain=ONNX_DOMAIN, plugin_namespace=PLUGIN_NAMESPACE,
                            plugin_version=PLUGIN_VERSION)


def build_time_dims(dims: Sequence[Any]) -> list[int | None]:
    """Values of shape dimensions known when the engine is built (ints or TensorRT ShapeExprs);
    None for a dimension that stays dynamic."""
    return [d if isinstance(d, int) else (d.constant_value() if d.is_constant else None)
            for d in dims]


def kernel_specialization(query: Sequence[Any], gallery: Sequence[Any], wq: Sequence[Any],
                          wg: Sequence[Any]) -> tuple[int, int, int, int]:
    """(HWq, HWg, C, P): the sizes compiled into the kernel; only Nq and Ng may be dynamic."""
    q, g, w = build_time_dims(query), build_time_dims(gallery), build_time_dims(wq)
    sizes = {"query HW": q[1], "gallery HW": g[1], "channels C": q[2], "projection width P": w[1]}
    dynamic = [name for name, value in sizes.items() if value is None]
    if dynamic:
        raise TalError(f"{PLUGIN_ID}: {', '.join(dynamic)} must be fixed when the engine is built "
                       "(only the batch sizes Nq and Ng may be dynamic)")
    check_match_shapes(q, g, w, build_time_dims(wg))
    return q[1], g[1], q[2], w[1]


def define_plugin(trt, trtp, arch: int) -> None:
    """Register the plugin's description, type combinations and AOT kernel with `trtp`
    (tensorrt.plugin) for GPUs of compute capability `arch` (e.g. 90 for H100)."""
    from . import kernel

    @trtp.register(PLUGIN_ID)
    def describe(query: trtp.TensorDesc, gallery: trtp.TensorDesc, wq: trtp.TensorDesc,
                 wg: trtp.TensorDesc) -> trtp.TensorDesc:
        shape = match_output_dims(query.shape_expr, gallery.shape_expr, wq.shape_expr)
        return trtp.from_shape_expr(shape, dtype=trt.float32)

    @trtp.autotune(PLUGIN_ID)
    def type_combinations(query, gallery, wq, wg, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES, "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def compile_kernel(query, gallery, wq, wg, outputs, tactic):
        hwq, hwg, c, p = kernel_specialization(query.shape_expr, gallery.shape_expr,
                                               wq.shape_expr, wg.shape_expr)
        dtype_name = TRT_DTYPE_NAMES[query.dtype.name]
        compiled, config = kernel.compile_ptx(dtype_name, hwq, hwg, c, p, arch=arch)
        n_q, n_g = query.shape_expr[0], gallery.shape_expr[0]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = kernel.grid_size(n_q, n_g, config["GALLERIES"], cdiv=trtp.cdiv)
        launch.block_x = compiled.metadata.num_warps * 32
        launch.shared_mem = compiled.metadata.shared
        scalars = trtp.SymIntExprs(2)  # the kernel's (n_q, n_g), between inputs and output
        scalars[0] = trtp.SymInt32(n_q)
        scalars[1] = trtp.SymInt32(n_g)
        return compiled.metadata.name, compiled.asm["ptx"], launch, scalars


@functools.cache
def register() -> None:
    """Make `tal::QAConvMatch` known to TensorRT in this process (before parsing an ONNX graph
    with QAConvMatch nodes or deserializing an engine built with them). Idempotent."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as err:
        raise TalError(f"the TensorRT plugin {PLUGIN_ID} needs TensorRT 10 "
                       "(pip install 'tal-reid[trt]'); it is not installed") from err
    if not hasattr(trtp, "aot_impl"):
        raise TalError(f"TensorRT {trt.__version__} lacks tensorrt.plugin.aot_impl; {PLUGIN_ID} "
                       "needs a TensorRT 10 release with ahead-of-time Python plugins")
    from triton.runtime import driver

    define_plugin(trt, trtp, arch=driver.active.get_current_target().arch)
