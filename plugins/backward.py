"""Gradients of QAConvMatch / QAConv responses, routed through the argmax positions.

With S = Q_p G_g^T, a = argmax_j S[i, j] and b = argmax_i S[i, j], the op's responses are
S[i, a(i)] and S[b(j), j], so the gradient of S is sparse:

    dS[i, j] = d(max_j S)[i] * [j == a(i)] + d(max_i S)[j] * [i == b(j)]

and dQ_p = dS @ G_g, dG_g = dS^T @ Q_p. For the projected op, d(max_j S) = dOut @ wq^T,
d(max_i S) = dOut @ wg^T, dwq = sum over pairs of (max_j S) dOut^T, and likewise dwg.

Nothing is saved from the forward pass except the inputs: S is recomputed block by block
(the same blocks as the CPU forward, plugins/cpu.py), so the backward has the forward's memory
bound and works on any device (the CUDA forward runs the Triton kernel; its backward is this).
Ties: torch.amax (the reference) splits the gradient evenly between equal maxima, this routes
it to one of them; with real-valued features exact ties do not occur.
"""
from __future__ import annotations

from .cpu import similarity_blocks, torch_block_rows, torch_ops


def qaconv_backward(query, gallery, grad, wq=None, wg=None):
    """Gradients for query, gallery (and wq, wg when given) from `grad`.

    grad: d/d(out) of qaconv_match, [Nq, Ng, P] (wq, wg given), or of qaconv_responses,
    [Nq, Ng, HWq + HWg] (wq, wg None). Returns (d_query, d_gallery, d_wq, d_wg) in the input
    dtypes; d_wq, d_wg are None for responses.
    """
    import torch

    ops = torch_ops(query.dtype, gallery.dtype)
    hwq, hwg = query.shape[1], gallery.shape[1]
    d_query = ops.compute(torch.zeros_like(query))
    d_gallery = ops.compute(torch.zeros_like(gallery))
    project = wq is not None
    if project:
        wq_c, wg_c = ops.compute(wq), ops.compute(wg)
        d_wq, d_wg = torch.zeros_like(wq_c), torch.zeros_like(wg_c)
    for q0, q_rows, g0, g_rows, s in similarity_blocks(query, gallery, ops, torch_block_rows(query)):
        nb, mb = s.shape[0], s.shape[2]
        best_g, arg_g = s.max(dim=3)  # [nb, HWq, mb]
        best_q, arg_q = s.max(dim=1)  # [nb, mb, HWg]
        g_out = ops.compute(grad[q0:q0 + nb, g0:g0 + mb])
        if project:
            d_best_g = g_out @ wq_c.T  # [nb, mb, HWq]
            d_best_q = g_out @ wg_c.T  # [nb, mb, HWg]
            d_wq += torch.einsum("nim,nmp->ip", best_g, g_out)
            d_wg += torch.einsum("nmj,nmp->jp", best_q, g_out)
        else:
            d_best_g, d_best_q = g_out[..., :hwq], g_out[..., hwq:]
        d_s = torch.zeros_like(s)
        d_s.scatter_add_(3, arg_g.unsqueeze(3), d_best_g.transpose(1, 2).unsqueeze(3))
        d_s.scatter_add_(1, arg_q.unsqueeze(1), d_best_q.unsqueeze(1))
        d_s = d_s.reshape(nb * hwq, mb * hwg)
        d_query[q0:q0 + nb] += (d_s @ g_rows).reshape(nb, hwq, -1)
        d_gallery[g0:g0 + mb] += (d_s.T @ q_rows).reshape(mb, hwg, -1)
    grads = (d_query.to(query.dtype), d_gallery.to(gallery.dtype))
    if project:
        return grads + (d_wq.to(wq.dtype), d_wg.to(wg.dtype))
    return grads + (None, None)
