"""TensorRT plugin `tal::QAConvMatch`, backed by the Triton kernel.

Written against TensorRT's Python "quickly deployable plugin" API (`tensorrt.plugin`, 10.9+:
the release that added `aot_impl`): `register` gives the output descriptor (shape [Nq, Ng, P],
fp32), `autotune` the supported types (query and gallery both fp16 or both fp32; wq, wg fp32),
and `aot_impl` the kernel: the Triton kernel of plugins/kernel.py compiled ahead of time to
PTX for the build GPU, with HW, C and P baked in and Nq, Ng passed as the two scalar arguments.
TensorRT embeds the PTX in the engine, so a built engine runs without Python, Triton or torch.

TensorRT's rules, as its validator applies them (and the strict stand-in of the tests does):
the `register` function has real class annotations (`TensorDesc` arguments, a `TensorDesc`
return); `autotune` takes the registered inputs then `outputs`; `aot_impl` takes the inputs,
`outputs`, `tactic` and must be annotated to return `tuple[str | bytes, str | bytes,
KernelLaunchParams, SymIntExprs]`. That is why this module does not use postponed
(string) annotations. TensorRT launches the kernel with (inputs, extra scalars, outputs), so
the PTX is fitted to that (plugins/ptx.py): Triton's scratch parameters are removed and the PTX
ISA is capped to what the deployment driver accepts (`AotTarget`).

Registration is staged so that a failure cannot leave a half-defined plugin behind: everything
that can fail on our side (imports, GPU and driver detection, the function definitions) happens
before TensorRT is called, and the three TensorRT steps are recorded as they succeed, so a
retry after a failure resumes instead of hitting "already has a definition".

ONNX: TensorRT's parser maps a node whose op_type equals a registered plugin name to that
plugin; the namespace comes from the node's `plugin_namespace` attribute, the version from
`plugin_version` (default "1"), and an `aot` attribute set to 1 asks for the ahead-of-time
implementation (quickly-deployable-plugins sample, TensorRT 10.9). `onnx_node` builds such a
node.
"""
# No `from __future__ import annotations`: TensorRT validates the annotation objects.
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import ptx as ptx_text
from .errors import TalError
from .shapes import check_match_shapes, match_output_dims
from .triton_env import triton_available

log = logging.getLogger("tal_plugins")

PLUGIN_NAMESPACE = "tal"
PLUGIN_NAME = "QAConvMatch"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ONNX_DOMAIN = "tal"
# Positions: query, gallery, wq, wg, out. '|' alternatives are dependent: query and gallery are
# both FP16 or both FP32; the projections and the output are always FP32.
IO_TYPES = "FP16|FP32,FP16|FP32,FP32|FP32,FP32|FP32,FP32|FP32"
TRT_DTYPE_NAMES = {"HALF": "fp16", "FLOAT": "fp32"}
# The arguments TensorRT passes to an AOT kernel, in order: the input tensors, the extra
# scalars of `aot_impl` (Nq, Ng), the output tensors. True = a device pointer.
LAUNCH_ARGUMENTS = (("query", True), ("gallery", True), ("wq", True), ("wg", True),
                    ("n_q", False), ("n_g", False), ("out", True))
# Scratch buffers Triton may ask the launcher for (KernelMetadata attributes).
SCRATCH_SIZES = ("global_scratch_size", "profile_scratch_size")
MIN_TENSORRT = (10, 9)   # tensorrt.plugin.aot_impl
TESTED_BELOW = (11, 0)   # the `trt` extra's upper bound


def onnx_node(query: str, gallery: str, wq: str, wg: str, output: str, name: str | None = None):
    """An ONNX NodeProto `tal::QAConvMatch(query, gallery, wq, wg) -> output` that TensorRT's
    parser resolves to this plugin's AOT implementation (needs `onnx`: export side only)."""
    from onnx import helper

    return helper.make_node(PLUGIN_NAME, [query, gallery, wq, wg], [output], name=name,
                            domain=ONNX_DOMAIN, plugin_namespace=PLUGIN_NAMESPACE,
                            plugin_version=PLUGIN_VERSION, aot=1)


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


def tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string, after checking the plugin can use it."""
    match = re.match(r"(\d+)\.(\d+)", str(text))
    version = (int(match[1]), int(match[2])) if match else (0, 0)
    if version < MIN_TENSORRT:
        raise TalError(f"TensorRT {text} is too old for {PLUGIN_ID}: it needs TensorRT "
                       f">= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} (tensorrt.plugin.aot_impl); "
                       "pip install 'tal-reid[trt]'")
    if version >= TESTED_BELOW:
        log.warning("TensorRT %s is newer than the 10.x releases %s is written for", text,
                    PLUGIN_ID)
    return version


@dataclass(frozen=True)
class AotTarget:
    """Where the ahead-of-time kernel will run: the GPU's compute capability (e.g. 90) and the
    newest PTX ISA its driver accepts, with where that limit came from."""
    arch: int
    max_isa: ptx_text.Isa
    isa_source: str

    @property
    def target_name(self) -> str:
        return ptx_text.target_name(self.arch)


def aot_target(arch: int, ptx_isa: str | None = None,
               driver_cuda: Callable[[], tuple[int, int] | None] = ptx_text.driver_cuda_version
               ) -> AotTarget:
    """The target for compute capability `arch`: PTX ISA capped at `ptx_isa` ("8.4") when given,
    else at what this machine's driver supports."""
    if ptx_isa is not None:
        limit, source = ptx_text.parse_isa(ptx_isa), f"--ptx-isa {ptx_isa}"
    else:
        cuda = driver_cuda()
        if cuda is None:
            raise TalError(f"{PLUGIN_ID}: no NVIDIA driver found to tell which PTX ISA the "
                           "engine may use; pass --ptx-isa (e.g. 8.4 for CUDA 12.4 drivers)")
        limit, source = ptx_text.isa_for_cuda(cuda), f"driver (CUDA {cuda[0]}.{cuda[1]})"
    needed = ptx_text.min_isa(arch)
    if limit < needed:
        raise TalError(f"{PLUGIN_ID}: {ptx_text.target_name(arch)} kernels need PTX ISA >= "
                       f"{ptx_text.format_isa(needed)}, but {source} allows only "
                       f"{ptx_text.format_isa(limit)}; update the driver")
    return AotTarget(arch, limit, source)


@dataclass
class Registration:
    """The plugin as registered in this process: its target and the kernels TensorRT asked
    for while building (what the bundle manifest records)."""
    target: AotTarget
    kernels: list[dict] = field(default_factory=list)

    def record(self, kernel: dict) -> None:
        if kernel not in self.kernels:
            self.kernels.append(kernel)


def fit_for_tensorrt(ptx: str, metadata: Any, target: AotTarget) -> str:
    """Triton's PTX for one kernel -> the PTX TensorRT may launch on `target` (module doc):
    exactly LAUNCH_ARGUMENTS as parameters, ISA within the target's limit, checked by ptxas."""
    name, params = ptx_text.entry_params(ptx)
    extra = params[len(LAUNCH_ARGUMENTS):]
    scratch = {attr: int(getattr(metadata, attr, 0) or 0) for attr in SCRATCH_SIZES}
    if extra and any(scratch.values()):
        raise TalError(f"{PLUGIN_ID}: the Triton kernel needs scratch memory ("
                       + ", ".join(f"{k} = {v}" for k, v in scratch.items() if v)
                       + "), which TensorRT's AOT launcher cannot provide")
    if len(params) < len(LAUNCH_ARGUMENTS) or any(
            p.is_pointer != pointer for p, (_, pointer) in zip(params, LAUNCH_ARGUMENTS)):
        raise TalError(f"{PLUGIN_ID}: kernel {name} takes ({', '.join(p.type for p in params)}),"
                       " not the (4 pointers, 2 int32, 1 pointer) TensorRT launches it with")
    ptx = ptx_text.drop_trailing_params(ptx, len(LAUNCH_ARGUMENTS))
    ptx = ptx_text.with_isa_version(ptx, min(ptx_text.isa_version(ptx), target.max_isa))
    ptx_text.check_assembles(ptx, target.arch)
    return ptx


def compile_aot_kernel(dtype_name: str, sizes: tuple[int, int, int, int], target: AotTarget):
    """(PTX fitted for TensorRT, compiled kernel, launch config) of one specialization.

    The boundary to plugins/kernel.py: `kernel.compile_ptx(dtype, hwq, hwg, c, p, arch=...)`
    returns (compiled, config) with `compiled.asm["ptx"]` and `compiled.metadata.{name,
    num_warps, shared, *_scratch_size}`; `kernel.grid_size` gives the program count. The config
    is the launch table's for the target (the one the run-time launcher uses there), logged and
    recorded in the manifest (`Registration.kernels`).
    """
    from . import kernel

    compiled, config = kernel.compile_ptx(dtype_name, *sizes, arch=target.arch)
    log.info("%s: %s kernel for HW %dx%d, C %d, P %d on %s: launch config %s (table), %d bytes "
             "of shared memory", PLUGIN_ID, dtype_name, *sizes, target.target_name, config,
             compiled.metadata.shared)
    return fit_for_tensorrt(compiled.asm["ptx"], compiled.metadata, target), compiled, config


def define_plugin(trt, trtp, registration: Registration, stages_done: set[str]) -> None:
    """Register the plugin's description, type combinations and AOT kernel with `trtp`
    (tensorrt.plugin) for `registration.target`. Stages in `stages_done` are skipped and each
    one that succeeds is added, so a call after a failure completes the definition."""
    from . import kernel

    def describe(query: trtp.TensorDesc, gallery: trtp.TensorDesc, wq: trtp.TensorDesc,
                 wg: trtp.TensorDesc) -> trtp.TensorDesc:
        shape = match_output_dims(query.shape_expr, gallery.shape_expr, wq.shape_expr)
        return trtp.from_shape_expr(tuple(shape), dtype=trt.float32)

    def type_combinations(query, gallery, wq, wg, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(IO_TYPES, "LINEAR")]

    def compile_kernel(query, gallery, wq, wg, outputs, tactic: int
                       ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams,
                                  trtp.SymIntExprs]:
        sizes = kernel_specialization(query.shape_expr, gallery.shape_expr, wq.shape_expr,
                                      wg.shape_expr)
        dtype_name = TRT_DTYPE_NAMES[query.dtype.name]
        ptx, compiled, config = compile_aot_kernel(dtype_name, sizes, registration.target)
        registration.record({"dtype": dtype_name, "hw": [sizes[0], sizes[1]],
                             "channels": sizes[2], "projections": sizes[3],
                             "ptx_isa": ptx_text.format_isa(ptx_text.isa_version(ptx)),
                             "launch_config": {**config.kernel_args(), "source": "table"},
                             "threads": compiled.metadata.num_warps * 32,
                             "shared_bytes": compiled.metadata.shared})
        n_q, n_g = query.shape_expr[0], gallery.shape_expr[0]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = kernel.grid_size(n_q, n_g, cdiv=trtp.cdiv)
        launch.block_x = compiled.metadata.num_warps * 32
        launch.shared_mem = compiled.metadata.shared
        scalars = trtp.SymIntExprs(2)  # the kernel's (n_q, n_g), between inputs and output
        scalars[0] = trtp.SymInt32(n_q)
        scalars[1] = trtp.SymInt32(n_g)
        return compiled.metadata.name, ptx, launch, scalars

    for stage, decorator, function in (("register", trtp.register, describe),
                                       ("autotune", trtp.autotune, type_combinations),
                                       ("aot_impl", trtp.aot_impl, compile_kernel)):
        if stage not in stages_done:
            decorator(PLUGIN_ID)(function)
            stages_done.add(stage)


_STAGES_DONE: set[str] = set()  # of this process's tensorrt.plugin registry
_REGISTRATION: Registration | None = None


def _import_tensorrt():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as err:
        raise TalError(f"the TensorRT plugin {PLUGIN_ID} needs TensorRT >= 10.9 "
                       f"(pip install 'tal-reid[trt]'); it is not installed ({err})") from None
    tensorrt_version(trt.__version__)
    if not hasattr(trtp, "aot_impl"):
        raise TalError(f"TensorRT {trt.__version__} lacks tensorrt.plugin.aot_impl; {PLUGIN_ID} "
                       "needs TensorRT >= 10.9")
    return trt, trtp


def _current_arch() -> int:
    """Compute capability of the GPU Triton compiles for (e.g. 90)."""
    try:
        from triton.runtime import driver

        return int(driver.active.get_current_target().arch)
    except Exception as err:  # triton raises RuntimeError/AssertionError without a GPU
        raise TalError(f"{PLUGIN_ID}: no CUDA GPU visible to Triton to compile the kernel for "
                       f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                       ) from None


def register(ptx_isa: str | None = None) -> Registration:
    """Make `tal::QAConvMatch` known to TensorRT in this process (before parsing an ONNX graph
    with QAConvMatch nodes), compiling for this machine's GPU with the PTX ISA capped at
    `ptx_isa` or at what its driver supports. Idempotent for the same target."""
    global _REGISTRATION
    trt, trtp = _import_tensorrt()
    if not triton_available():
        raise TalError(f"the TensorRT plugin {PLUGIN_ID} compiles its kernel with Triton, which "
                       "is not installed (pip install 'tal-reid[gpu]')")
    target = aot_target(_current_arch(), ptx_isa)
    if _REGISTRATION is not None:
        if _REGISTRATION.target != target:
            raise TalError(f"{PLUGIN_ID} is already registered in this process for "
                           f"{_REGISTRATION.target.target_name}, PTX ISA <= "
                           f"{ptx_text.format_isa(_REGISTRATION.target.max_isa)}; start a new "
                           "process for another target")
        return _REGISTRATION
    registration = Registration(target)
    define_plugin(trt, trtp, registration, _STAGES_DONE)
    _REGISTRATION = registration
    return registration
