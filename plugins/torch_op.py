"""PyTorch custom ops `tal::qaconv_match` and `tal::qaconv_responses`.

Registered through torch.library.custom_op, so torch.compile and torch.export see one opaque
node each (the fake implementations give output shape and dtype), with autograd from
plugins/backward.py. They are registered when this module is imported and torch is installed
(`OPS`); without torch the module still imports (OPS is None), because tal_plugins must work
where only numpy is. Registering at import, not on first call, keeps the registration out of
code that torch.compile traces.

Backends (`backend=` argument):
  auto    CUDA tensors -> the Triton kernel for `qaconv_match` on float16 / bfloat16 features
          with C <= 256 and HW <= 512 (where Triton is installed), else the blocked torch path (cuBLAS GEMM +
          max); `qaconv_responses` -> the blocked torch path; CPU tensors -> the blocked torch
          path.
  triton  the Triton kernel: CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 (Triton's
          numpy interpreter: slow, for tests).
  torch   blocked GEMM + max (plugins/cpu.py), any device.
Query and gallery of different dtypes are promoted to a common one. Outputs are fp32 (fp64
when an input is fp64: that keeps gradcheck meaningful).

**Why float32 runs on the torch path on CUDA (auto).** The kernel takes fp32 features as three
tf32 tensor-core passes (near-fp32 accuracy, a compile per specialization at the first call);
cuBLAS's fp32 GEMM + max needs no compile and keeps full fp32 accuracy; half-precision features
are what the kernel is for. `backend="triton"` still runs it on fp32.

**Why responses run on the torch path on CUDA.** `qaconv_responses` is the training op (the
heads' batch-statistics BN needs whole response vectors), called per phase, scale and expert on
batch-sized inputs, and its backward is the blocked torch path anyway. There the cuBLAS GEMM +
max needs no compile and ran at 65-70 TFLOP/s on an H200 at training sizes (issue 12), while
each kernel specialization costs a compile at the first iteration; `benchmarks/match.py
--training` times both. `backend="triton"` still runs the kernel in responses mode.
"""
from __future__ import annotations

from types import SimpleNamespace

from .errors import TalError

from . import BACKENDS, cpu
from .backward import qaconv_backward
from .shapes import check_match_shapes, match_output_shape, responses_output_shape
from .triton_env import KERNEL_MAX_CHANNELS, KERNEL_MAX_LOCATIONS, interpreting, triton_available

KERNEL_DTYPES = ("float16", "bfloat16", "float32")  # what backend="triton" takes
AUTO_KERNEL_DTYPES = ("float16", "bfloat16")  # what backend="auto" gives it on CUDA


def resolve_backend(backend: str, device_type: str, dtype_name: str, channels: int,
                    responses: bool = False, locations: int = 0) -> str:
    """The backend that runs torch tensors of this device type, dtype and channel count (and
    `locations`: the larger of HWq, HWg; 0 when not known yet), for the projected op or
    (`responses`) the responses op: 'triton' or 'torch'; TalError for a choice that cannot run
    here."""
    if backend not in BACKENDS:
        raise TalError(f"unknown QAConvMatch backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        raise TalError("QAConvMatch backend 'numpy' takes numpy arrays; torch tensors run on "
                       "'auto', 'triton' or 'torch'")
    kernel_fits = (dtype_name in KERNEL_DTYPES and channels <= KERNEL_MAX_CHANNELS
                   and locations <= KERNEL_MAX_LOCATIONS)
    if backend == "auto":
        use_kernel = (device_type == "cuda" and not responses and kernel_fits
                      and dtype_name in AUTO_KERNEL_DTYPES)
        return "triton" if use_kernel and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise TalError("QAConvMatch backend 'triton' needs the triton package "
                           "(pip install 'tal-reid[gpu]')")
        if not kernel_fits:
            raise TalError(f"QAConvMatch backend 'triton' takes float16/bfloat16/float32 features "
                           f"with at most {KERNEL_MAX_CHANNELS} channels and "
                           f"{KERNEL_MAX_LOCATIONS} locations, got {dtype_name} with {channels} "
                           f"channels and {locations or '?'} locations; use backend 'torch'")
        if device_type != "cuda" and not interpreting():
            raise TalError(f"QAConvMatch backend 'triton' needs CUDA tensors (got {device_type}); "
                           "set TRITON_INTERPRET=1 before starting Python to run the kernel in "
                           "Triton's CPU interpreter")
    return backend


def _common_dtype(query, gallery):
    import torch

    dtype = torch.promote_types(query.dtype, gallery.dtype)
    return query.to(dtype), gallery.to(dtype)


def _output_dtype(query, gallery):
    import torch

    wide = torch.float64 in (query.dtype, gallery.dtype)
    return torch.float64 if wide else torch.float32


def _run(query, gallery, wq, wg, backend: str, responses: bool):
    """Shared forward of both ops (wq, wg are None for responses)."""
    import torch

    check_match_shapes(query.shape, gallery.shape, None if responses else wq.shape,
                       None if responses else wg.shape)
    query, gallery = _common_dtype(query, gallery)
    dtype_name = str(query.dtype).removeprefix("torch.")
    chosen = resolve_backend(backend, query.device.type, dtype_name, query.shape[2], responses,
                             max(query.shape[1], gallery.shape[1]))
    if chosen == "torch":
        return cpu.torch_match(query, gallery, wq, wg, responses)
    from . import kernel

    if not responses:
        wq = wq.to(torch.float32).contiguous()
        wg = wg.to(torch.float32).contiguous()
    return kernel.launch(query.contiguous(), gallery.contiguous(), wq, wg, responses)


def _setup_match(ctx, inputs, output) -> None:
    query, gallery, wq, wg, _ = inputs
    ctx.save_for_backward(query, gallery, wq, wg)


def _backward_match(ctx, grad):
    query, gallery, wq, wg = ctx.saved_tensors
    return qaconv_backward(query, gallery, grad, wq, wg) + (None,)


def _setup_responses(ctx, inputs, output) -> None:
    query, gallery, _ = inputs
    ctx.save_for_backward(query, gallery)


def _backward_responses(ctx, grad):
    query, gallery = ctx.saved_tensors
    return qaconv_backward(query, gallery, grad)[:2] + (None,)


def _register() -> SimpleNamespace:
    """Define the custom ops; returns SimpleNamespace(qaconv_match, qaconv_responses)."""
    from torch.library import custom_op

    @custom_op("tal::qaconv_match", mutates_args=(),
               schema="(Tensor query, Tensor gallery, Tensor wq, Tensor wg, str backend='auto') -> Tensor")
    def qaconv_match(query, gallery, wq, wg, backend="auto"):
        return _run(query, gallery, wq, wg, backend, responses=False)

    @qaconv_match.register_fake
    def _(query, gallery, wq, wg, backend="auto"):
        shape = match_output_shape(query.shape, gallery.shape, wq.shape, wg.shape)
        return query.new_empty(shape, dtype=_output_dtype(query, gallery))

    @custom_op("tal::qaconv_responses", mutates_args=(),
               schema="(Tensor query, Tensor gallery, str backend='auto') -> Tensor")
    def qaconv_responses(query, gallery, backend="auto"):
        return _run(query, gallery, None, None, backend, responses=True)

    @qaconv_responses.register_fake
    def _(query, gallery, backend="auto"):
        shape = responses_output_shape(query.shape, gallery.shape)
        return query.new_empty(shape, dtype=_output_dtype(query, gallery))

    qaconv_match.register_autograd(_backward_match, setup_context=_setup_match)
    qaconv_responses.register_autograd(_backward_responses, setup_context=_setup_responses)
    return SimpleNamespace(qaconv_match=qaconv_match, qaconv_responses=qaconv_responses)


try:
    import torch  # noqa: F401  (the custom ops exist only where torch does)
except ImportError:
    OPS = None
else:
    OPS = _register()
