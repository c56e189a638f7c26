"""The compiled Triton kernel on a CUDA device against the reference (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

import tal_plugins
from tal_plugins import qaconv_match_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# (Nq, Ng, HWq, HWg, C, P): odd sizes, then the model's sizes (24 x 8 maps, C 128, P 1 / 1 + 64).
SIZES = [(3, 11, 20, 35, 24, 1), (5, 9, 33, 17, 40, 3), (7, 130, 48, 48, 64, 65),
         (16, 301, 192, 192, 128, 1), (16, 301, 192, 192, 128, 65)]


def cuda_inputs(inputs, size, dtype):
    n_q, n_g, hwq, hwg, c, p = size
    q = torch.from_numpy(inputs.maps(n_q, hwq, c)).to("cuda", dtype)
    g = torch.from_numpy(inputs.maps(n_g, hwg, c)).to("cuda", dtype)
    wq = torch.from_numpy(inputs.weights(hwq, p)).cuda()
    wg = torch.from_numpy(inputs.weights(hwg, p)).cuda()
    return q, g, wq, wg


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("size", SIZES)
def test_kernel_matches_reference_on_gpu(inputs, size, dtype):
    q, g, wq, wg = cuda_inputs(inputs, size, dtype)
    out = tal_plugins.qaconv_match(q, g, wq, wg, backend="triton")
    # Reference in float64 on the same (rounded) inputs; tolerance 1e-4 relative covers fp32
    # accumulation order and, for fp32 inputs, the three-pass tf32 products.
    expected = qaconv_match_reference(q.double(), g.double(), wq.double(), wg.double())
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4 * (1 + expected.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_kernel_responses_on_gpu(inputs, dtype):
    q, g, _, _ = cuda_inputs(inputs, (6, 23, 192, 192, 128, 1), dtype)
    out = tal_plugins.qaconv_responses(q, g, backend="triton")
    s = torch.einsum("pic,gjc->pgij", q.double(), g.double())
    torch.testing.assert_close(out.double(), torch.cat([s.amax(3), s.amax(2)], -1), rtol=0, atol=1e-5)


def test_auto_backend_uses_the_kernel_and_gradients_flow(inputs):
    q, g, wq, wg = (t.requires_grad_() for t in cuda_inputs(inputs, (4, 9, 48, 48, 64, 3), torch.float32))
    out = tal_plugins.qaconv_match(q, g, wq, wg)
    torch.testing.assert_close(out, tal_plugins.qaconv_match(q, g, wq, wg, backend="triton"))
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, g, wq, wg), grad_out)
    ref = torch.autograd.grad(qaconv_match_reference(q, g, wq, wg), (q, g, wq, wg), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (1 + b.abs().max().item()))
