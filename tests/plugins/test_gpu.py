"""The compiled Triton kernel and the training op on a CUDA device (skipped without one).

Every case is one kernel specialization (Triton compiles per map size, C, P range, dtype and
mode, never per Nq or Ng), no autotuning; each compile takes seconds (benchmarks/ptx_resources.py
compiles the same kernels for sm_90a and sm_80 on the CPU).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import tal_plugins  # noqa: E402
from tal_plugins import kernel, qaconv_match_reference, tuning  # noqa: E402

pytestmark = pytest.mark.gpu

# (Nq, Ng, HWq, HWg, C, P, dtype): odd sizes in each dtype, then the model's maps (24 x 8,
# C 128) at P 1 / 1 + 64 in fp16 and at P 1 in bf16.
CASES = [(3, 11, 20, 35, 24, 1, torch.float32), (5, 9, 33, 17, 40, 3, torch.bfloat16),
         (7, 130, 48, 48, 64, 65, torch.float16), (16, 301, 192, 192, 128, 1, torch.float16),
         (16, 301, 192, 192, 128, 65, torch.float16), (16, 301, 192, 192, 128, 1, torch.bfloat16)]


def cuda_inputs(inputs, size, dtype):
    n_q, n_g, hwq, hwg, c, p = size
    q = torch.from_numpy(inputs.maps(n_q, hwq, c)).to("cuda", dtype)
    g = torch.from_numpy(inputs.maps(n_g, hwg, c)).to("cuda", dtype)
    wq = torch.from_numpy(inputs.weights(hwq, p)).to("cuda")
    wg = torch.from_numpy(inputs.weights(hwg, p)).to("cuda")
    return q, g, wq, wg


def assert_matches_reference(out, q, g, wq, wg):
    # The reference's formula in float64 on the same (rounded) inputs (qaconv_match_reference
    # itself computes in fp32); 1e-4 relative covers fp32 accumulation order and, for fp32
    # inputs, the three-pass tf32 products.
    s = torch.einsum("pic,gjc->pgij", q.double(), g.double())
    expected = s.amax(dim=3) @ wq.double() + s.amax(dim=2) @ wg.double()
    assert out.dtype == torch.float32 and out.device == q.device and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=0,
                               atol=1e-4 * (1 + expected.abs().max().item()))


def compiled_kernels() -> int:
    """Kernels Triton has compiled for the QAConvMatch function in this process (its per-device
    caches, (kernel cache, ...) tuples in triton 3.3 to 3.9)."""
    caches = getattr(kernel._kernel(), "device_caches", None)
    if caches is None:
        pytest.skip("this triton keeps no device_caches")
    return sum(len(entry[0]) for entry in caches.values())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + str(c[6])[5:])
def test_kernel_matches_reference_on_gpu(inputs, case):
    q, g, wq, wg = cuda_inputs(inputs, case[:6], case[6])
    assert_matches_reference(tal_plugins.qaconv_match(q, g, wq, wg, backend="triton"), q, g, wq, wg)


def test_batch_sizes_reuse_one_compiled_kernel_with_the_table_config(inputs):
    """Nq and Ng vary per batch: after the first call no size compiles another kernel, and the
    launch config is the table's (no shared-memory fallback on this GPU)."""
    size = (1, 1, 192, 192, 128, 1)
    q, g, wq, wg = cuda_inputs(inputs, size, torch.float16)
    tal_plugins.qaconv_match(q, g, wq, wg, backend="triton")
    before = compiled_kernels()
    for n_q, n_g in ((1, 16), (16, 1), (17, 33), (64, 512), (3, 1000)):
        q, g, _, _ = cuda_inputs(inputs, (n_q, n_g, 192, 192, 128, 1), torch.float16)
        assert_matches_reference(tal_plugins.qaconv_match(q, g, wq, wg, backend="triton"),
                                 q, g, wq, wg)
    assert compiled_kernels() == before
    name, arch = kernel.device_identity(q.device.index or 0)
    key = tuning.TuningKey(arch, 192, 192, 128, 1, "fp16")
    assert kernel._CHOSEN[(q.device.index or 0, key)] == tuning.choose(key, name)[0]


@pytest.mark.parametrize("size, dtype", [((6, 23, 192, 192, 128, 1), torch.float16),
                                         ((6, 23, 40, 48, 32, 1), torch.float32)])
def test_kernel_responses_on_gpu(inputs, size, dtype):
    q, g, _, _ = cuda_inputs(inputs, size, dtype)
    out = tal_plugins.qaconv_responses(q, g, backend="triton")
    s = torch.einsum("pic,gjc->pgij", q.double(), g.double())
    torch.testing.assert_close(out.double(), torch.cat([s.amax(3), s.amax(2)], -1), rtol=0, atol=1e-5)


def test_auto_backend_runs_half_precision_on_the_kernel_and_gradients_flow(inputs):
    q, g, wq, wg = (t.requires_grad_() for t in cuda_inputs(inputs, (4, 9, 48, 48, 64, 3), torch.float16))
    out = tal_plugins.qaconv_match(q, g, wq, wg)
    torch.testing.assert_close(out, tal_plugins.qaconv_match(q, g, wq, wg, backend="triton"),
                               rtol=0, atol=0)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, g, wq, wg), grad_out)
    ref = torch.autograd.grad(qaconv_match_reference(q, g, wq, wg), (q, g, wq, wg), grad_out)
    for a, b in zip(ours, ref):  # fp16 gradients for the fp16 maps, fp32 for the projections
        assert a.device == b.device and a.dtype == b.dtype
        tol = 2e-3 if a.dtype == torch.float16 else 1e-4
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * (1 + b.abs().max().item()))
    # fp32 features go to the cuBLAS path (no multi-minute compile of the tf32x3 kernel)
    q32, g32 = q.detach().float(), g.detach().float()
    torch.testing.assert_close(tal_plugins.qaconv_match(q32, g32, wq, wg),
                               tal_plugins.qaconv_match(q32, g32, wq, wg, backend="torch"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_training_responses_run_without_a_kernel_compile(inputs, amp):
    """The training op on CUDA (auto backend): GEMM + max, gradients as autograd through the
    plain reference, also under fp16 autocast as `tal-train --amp` runs it."""
    hw, c = 40, 32  # sizes no other test compiles the kernel for
    q, g = (torch.from_numpy(inputs.maps(n, hw, c)).cuda().requires_grad_() for n in (6, 6))
    before = compiled_kernels()
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        out = tal_plugins.qaconv_responses(q, g)
    s = torch.einsum("pic,gjc->pgij", q, g)
    ref = torch.cat([s.amax(3), s.amax(2)], -1)
    # fp16 autocast rounds S to fp16 (|S| <= 1): 2^-11 relative
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-3 if amp else 1e-5)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, g), grad_out)
    theirs = torch.autograd.grad(ref, (q, g), grad_out)
    for a, b in zip(ours, theirs):
        assert a.device == q.device and a.dtype == torch.float32
        if not amp:  # under autocast a near-tie may pick another argmax; values checked above
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (1 + b.abs().max().item()))
    assert compiled_kernels() == before


def test_tuner_times_candidates_and_writes_the_cache(tmp_path, monkeypatch):
    from tal_plugins.timing import tune_key

    monkeypatch.setenv(tuning.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(tuning, "_READ", {})
    index = torch.cuda.current_device()
    name, arch = kernel.device_identity(index)
    key = tuning.TuningKey(arch, 16, 16, 16, 1, "fp16")
    result = tune_key(key, index, queries=4, galleries=16)
    assert len(result.timings) == len(tuning.tuning_candidates(key)) == 6
    assert result.best_ms > 0 and result.best in tuning.tuning_candidates(key)
    assert tuning.cache_file(name, arch).is_file()
    tuning._READ.clear()
    assert tuning.choose(key, name) == (result.best, "cache")
