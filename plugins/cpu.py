"""Blocked QAConvMatch for machines without a GPU: torch tensors or numpy arrays.

The official QAConv test path evaluates a 6-D einsum ('g c h w, p c y x -> g p y x h w') and
two max-reductions over it, which runs as many small, badly shaped products plus strided
reductions. Here a block of query maps and a block of gallery maps become one plain GEMM,
`[bq*HWq, C] @ [C, bg*HWg]`, whose result viewed as [bq, HWq, bg, HWg] puts both reductions
on cheap axes: max over the last (contiguous) axis gives the per-query-location maxima, max
over axis 1 is an element-wise maximum of contiguous [bg*HWg] rows. Projections follow on
the small response tensors.

Block sizes aim each GEMM side at BLOCK_ROWS rows (768: a 768 x 768 fp32 block of S is
2.4 MB, about one core's L2 here, and large enough to run the GEMM near its peak rate).
Peak extra memory: one S block of max(BLOCK_ROWS, HWq) x max(BLOCK_ROWS, HWg) floats plus
two fp32 copies of input blocks and the response blocks, independent of Nq and Ng (the
[Nq, Ng, P] output is the only thing that grows with them).

One generic implementation serves both array libraries through a three-function adapter, so
the torch path (training on CPU, the custom op's CPU kernel) and the numpy path (the runtime
without torch) are the same algorithm.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

BLOCK_ROWS = 768
# On a GPU (the fallback where Triton is missing, and the backward pass) larger blocks keep the
# GEMMs efficient: a 4096^2 fp32 S block is 64 MiB.
CUDA_BLOCK_ROWS = 4096


class ArrayOps(NamedTuple):
    """What the blocked algorithm needs from an array library."""
    compute: Callable[[Any], Any]  # a block in the accumulation dtype
    empty: Callable[[tuple, Any], Any]  # an uninitialized output like a given input
    amax: Callable[[Any, int], Any]  # max over one axis


NUMPY_OPS = ArrayOps(
    compute=lambda x: np.asarray(x, dtype=np.float32),
    empty=lambda shape, like: np.empty(shape, dtype=np.float32),
    amax=lambda x, axis: x.max(axis=axis),
)


def torch_ops(*dtypes) -> ArrayOps:
    """Adapter for torch tensors of these dtypes: fp32 accumulation (fp64 if any is fp64)."""
    import torch

    acc = torch.float64 if torch.float64 in dtypes else torch.float32
    return ArrayOps(
        compute=lambda x: x.to(acc),
        empty=lambda shape, like: torch.empty(shape, dtype=acc, device=like.device),
        amax=lambda x, axis: x.amax(dim=axis),
    )


def block_sizes(hwq: int, hwg: int, rows: int = BLOCK_ROWS) -> tuple[int, int]:
    """(queries, galleries) per block so each GEMM side has about `rows` rows."""
    return max(1, rows // hwq), max(1, rows // hwg)


def similarity_blocks(query, gallery, ops: ArrayOps, rows: int = BLOCK_ROWS):
    """Yield (q0, q_rows, g0, g_rows, s) over blocks of pairs: s = q_rows @ g_rows^T viewed as
    [nb, HWq, mb, HWg], q_rows/g_rows the [nb*HWq, C] / [mb*HWg, C] blocks in compute dtype.
    The forward pass and the gradient (plugins/backward.py) walk the same blocks."""
    n_q, hwq, c = query.shape
    n_g, hwg, _ = gallery.shape
    bq, bg = block_sizes(hwq, hwg, rows)
    for q0 in range(0, n_q, bq):
        q_rows = ops.compute(query[q0:q0 + bq]).reshape(-1, c)
        nb = q_rows.shape[0] // hwq
        for g0 in range(0, n_g, bg):
            g_rows = ops.compute(gallery[g0:g0 + bg]).reshape(-1, c)
            yield q0, q_rows, g0, g_rows, (q_rows @ g_rows.T).reshape(nb, hwq, -1, hwg)


def blocked_match(query, gallery, wq, wg, ops: ArrayOps, responses: bool = False,
                  rows: int = BLOCK_ROWS):
    """QAConvMatch (or, responses=True, the unprojected [max_j S, max_i S] vectors) by blocks.

    query [Nq, HWq, C], gallery [Ng, HWg, C], wq [HWq, P], wg [HWg, P] (None for
    responses) -> [Nq, Ng, P] or [Nq, Ng, HWq + HWg] in the accumulation dtype.
    """
    n_q, hwq, _ = query.shape
    n_g, hwg, _ = gallery.shape
    out = ops.empty((n_q, n_g, hwq + hwg if responses else wq.shape[1]), query)
    if not responses:
        wq, wg = ops.compute(wq), ops.compute(wg)
    for q0, _, g0, _, s in similarity_blocks(query, gallery, ops, rows):
        best_g = ops.amax(s, 3).swapaxes(1, 2)  # [nb, mb, HWq]: max over gallery locations
        best_q = ops.amax(s, 1)  # [nb, mb, HWg]: max over query locations
        target = out[q0:q0 + s.shape[0], g0:g0 + s.shape[2]]
        if responses:
            target[..., :hwq] = best_g
            target[..., hwq:] = best_q
        else:
            target[...] = best_g @ wq + best_q @ wg
    return out


def numpy_match(query: np.ndarray, gallery: np.ndarray, wq: np.ndarray | None,
                wg: np.ndarray | None, responses: bool = False) -> np.ndarray:
    """The numpy path (runtime without torch) -> float32."""
    return blocked_match(query, gallery, wq, wg, NUMPY_OPS, responses)


def torch_block_rows(tensor) -> int:
    """GEMM rows per block side for torch tensors on this tensor's device."""
    return CUDA_BLOCK_ROWS if tensor.is_cuda else BLOCK_ROWS


def torch_match(query, gallery, wq, wg, responses: bool = False):
    """The torch path, on any device (CPU; on CUDA the fallback when Triton is missing)."""
    return blocked_match(query, gallery, wq, wg, torch_ops(query.dtype, gallery.dtype), responses,
                         torch_block_rows(query))
