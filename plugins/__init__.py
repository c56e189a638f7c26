"""tal_plugins: the fused QAConv matching op (QAConvMatch) and its deployment plugins.

The op contract is in plugins/README.md. `qaconv_match` is the one entry point every QAConv head
(training, export parity, runtime) calls; heavy optional imports (torch, triton, tensorrt) happen
lazily inside it, so `import tal_plugins` works with numpy alone.

Modules: reference (the plain einsum + max definition), cpu (blocked torch / numpy paths),
kernel (the Triton kernel and its launchers), tuning (its launch-config table and per-GPU tuning
cache), timing (the opt-in tuning: timing candidate configs on a GPU), tune (its command line,
``python -m tal_plugins.tune``), torch_op (the `tal::` PyTorch custom ops and backend choice),
backward (gradients), shapes (shape rules), trt (the TensorRT plugin), ptx (fitting its PTX to
TensorRT: launch arguments, ISA version), triton_env (whether and which sizes the kernel runs).
"""
from __future__ import annotations

import numpy as np

from .errors import TalError

from .reference import qaconv_match_reference, qaconv_match_reference_numpy
from .shapes import check_match_shapes

__all__ = ["BACKENDS", "qaconv_match", "qaconv_responses", "qaconv_match_reference",
           "qaconv_match_reference_numpy"]

# The op's backends (`backend=` of qaconv_match / qaconv_responses; torch_op says which runs what).
BACKENDS = ("auto", "triton", "torch", "numpy")


def _numpy_inputs(backend: str, *arrays) -> None:
    if backend not in ("auto", "numpy"):
        raise TalError(f"QAConvMatch backend {backend!r} takes torch tensors; numpy arrays run on "
                       "backend 'auto' or 'numpy'")
    if any(not isinstance(a, np.ndarray) for a in arrays):
        raise TalError("qaconv_match: pass all inputs as numpy arrays or all as torch tensors")


def qaconv_match(query, gallery, wq, wg, backend: str = "auto"):
    """out[p, g] = max_cols(Q_p G_g^T) @ wq + max_rows(Q_p G_g^T) @ wg, fp32 [Nq, Ng, P].

    query [Nq, HWq, C], gallery [Ng, HWg, C], wq [HWq, P], wg [HWg, P]: torch tensors (autograd
    flows to all four; backend 'auto' | 'triton' | 'torch', see torch_op) or numpy arrays
    (backend 'auto' | 'numpy': the blocked numpy path, float32 result).
    """
    if isinstance(query, np.ndarray):
        _numpy_inputs(backend, gallery, wq, wg)
        check_match_shapes(query.shape, gallery.shape, wq.shape, wg.shape)
        from .cpu import numpy_match

        return numpy_match(query, gallery, wq, wg)
    from .torch_op import OPS

    return OPS.qaconv_match(query, gallery, wq, wg, backend)


def qaconv_responses(query, gallery, backend: str = "auto"):
    """Full response vectors [Nq, Ng, HWq + HWg] = [max_cols(S), max_rows(S)] (training heads).

    The same op with identity projections, computed without the projection; the training heads
    need whole vectors because their BatchNorm layers use batch statistics, which are not
    linear in the responses.
    """
    if isinstance(query, np.ndarray):
        _numpy_inputs(backend, gallery)
        check_match_shapes(query.shape, gallery.shape, None, None)
        from .cpu import numpy_match

        return numpy_match(query, gallery, None, None, responses=True)
    from .torch_op import OPS

    return OPS.qaconv_responses(query, gallery, backend)
