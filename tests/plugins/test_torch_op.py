"""The `tal::` PyTorch custom ops: registration, torch.export / torch.compile capture, autograd
against autograd through the reference, and backend selection."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import tal_plugins
from tal_infer.errors import TalError
from tal_plugins import qaconv_match_reference
from tal_plugins.torch_op import resolve_backend


def tensors(inputs, n_q, n_g, hwq, hwg, c, p, dtype=torch.float32):
    arrays = (inputs.maps(n_q, hwq, c), inputs.maps(n_g, hwg, c), inputs.weights(hwq, p),
              inputs.weights(hwg, p))
    return [torch.from_numpy(a).to(dtype).requires_grad_() for a in arrays]


class Head(torch.nn.Module):
    """A minimal head calling the op, as the model's QAConv heads do."""

    def __init__(self, hw: int, p: int):
        super().__init__()
        self.wq = torch.nn.Parameter(torch.randn(hw, p))
        self.wg = torch.nn.Parameter(torch.randn(hw, p))

    def forward(self, query, gallery):
        return tal_plugins.qaconv_match(query, gallery, self.wq, self.wg)[..., 0]


def test_ops_are_registered_under_tal_namespace():
    assert torch.ops.tal.qaconv_match.default is not None
    assert torch.ops.tal.qaconv_responses.default is not None
    q, g, w = torch.zeros(1, 3, 2), torch.zeros(2, 3, 2), torch.ones(3, 1)
    assert torch.ops.tal.qaconv_match(q, g, w, w).shape == (1, 2, 1)


def test_torch_export_captures_the_op_with_dynamic_batch_sizes(inputs):
    head = Head(12, 3)
    q, g = torch.from_numpy(inputs.maps(3, 12, 8)), torch.from_numpy(inputs.maps(5, 12, 8))
    n_q, n_g = torch.export.Dim("n_q"), torch.export.Dim("n_g")
    program = torch.export.export(head, (q, g), dynamic_shapes=({0: n_q}, {0: n_g}))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.tal.qaconv_match.default in targets
    q2, g2 = torch.from_numpy(inputs.maps(4, 12, 8)), torch.from_numpy(inputs.maps(7, 12, 8))
    torch.testing.assert_close(program.module()(q2, g2), head(q2, g2))


def test_torch_compile_traces_the_op_without_graph_breaks(inputs):
    head = Head(10, 2)
    q, g = torch.from_numpy(inputs.maps(2, 10, 4)), torch.from_numpy(inputs.maps(3, 10, 4))
    compiled = torch.compile(head, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, g), head(q, g))


@pytest.mark.parametrize("size", [(3, 4, 20, 35, 16, 1), (5, 2, 33, 17, 8, 4)])
def test_match_gradients_equal_reference_gradients(inputs, size):
    ours_in = tensors(inputs, *size)
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    grad_out = torch.randn(size[0], size[1], size[5])
    ours = torch.autograd.grad(tal_plugins.qaconv_match(*ours_in), ours_in, grad_out)
    ref = torch.autograd.grad(qaconv_match_reference(*ref_in), ref_in, grad_out)
    for name, a, b in zip(("query", "gallery", "wq", "wg"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * (1 + b.abs().max().item()), msg=name)


def test_responses_gradients_equal_reference_gradients(inputs):
    q, g = (torch.from_numpy(inputs.maps(n, hw, 8)).requires_grad_() for n, hw in ((3, 14), (4, 9)))
    grad_out = torch.randn(3, 4, 14 + 9)
    ours = torch.autograd.grad(tal_plugins.qaconv_responses(q, g), (q, g), grad_out)
    s = torch.einsum("pic,gjc->pgij", q, g)
    ref = torch.autograd.grad(torch.cat([s.amax(3), s.amax(2)], -1), (q, g), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradcheck_in_float64(inputs):
    args = tensors(inputs, 2, 3, 5, 7, 4, 2, dtype=torch.float64)
    assert tal_plugins.qaconv_match(*args).dtype == torch.float64
    assert torch.autograd.gradcheck(tal_plugins.qaconv_match, args)
    assert torch.autograd.gradcheck(tal_plugins.qaconv_responses, args[:2])


def test_gradients_of_mixed_dtype_inputs_keep_each_dtype(inputs):
    q, g, wq, wg = tensors(inputs, 2, 3, 6, 6, 4, 1)
    q_half = q.detach().to(torch.bfloat16).requires_grad_()
    grads = torch.autograd.grad(tal_plugins.qaconv_match(q_half, g, wq, wg).sum(), (q_half, g, wq, wg))
    assert [t.dtype for t in grads] == [torch.bfloat16, torch.float32, torch.float32, torch.float32]


def test_backend_choice():
    assert resolve_backend("auto", "cpu", "float32", 128) == "torch"
    assert resolve_backend("torch", "cuda", "float16", 128) == "torch"
    with pytest.raises(TalError, match="unknown QAConvMatch backend 'cuda'"):
        resolve_backend("cuda", "cpu", "float32", 128)
    with pytest.raises(TalError, match="takes numpy arrays"):
        resolve_backend("numpy", "cpu", "float32", 128)


def test_auto_backend_on_cuda_picks_the_kernel_only_where_it_runs():
    pytest.importorskip("triton")
    assert resolve_backend("auto", "cuda", "float16", 128) == "triton"
    assert resolve_backend("auto", "cuda", "bfloat16", 128) == "triton"
    # fp32: cuBLAS, no multi-minute compile of the three-pass tf32 kernel (backend="triton" can)
    assert resolve_backend("auto", "cuda", "float32", 128) == "torch"
    assert resolve_backend("triton", "cuda", "float32", 128) == "triton"
    assert resolve_backend("auto", "cuda", "float64", 128) == "torch"
    assert resolve_backend("auto", "cuda", "float16", 512) == "torch"


def test_auto_backend_runs_training_responses_on_the_torch_path_on_cuda():
    # qaconv_responses is the training op: cuBLAS GEMM + max, no kernel compile per shape.
    assert resolve_backend("auto", "cuda", "float16", 128, responses=True) == "torch"
    assert resolve_backend("auto", "cpu", "float32", 128, responses=True) == "torch"
    if importlib.util.find_spec("triton") is not None:
        assert resolve_backend("triton", "cuda", "float16", 128, responses=True) == "triton"


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, w = torch.zeros(1, 4, 2), torch.zeros(4, 1)
    with pytest.raises(TalError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        tal_plugins.qaconv_match(q, q, w, w, backend="triton")
    with pytest.raises(TalError, match="float16/bfloat16/float32"):
        resolve_backend("triton", "cuda", "float64", 8)


def test_torch_and_numpy_paths_equal_the_torch_einsum_reference(inputs):
    """Both library paths run one blocked algorithm (plugins/cpu.py), so each is compared with
    the plain torch einsum reference, not with the other; 30 x 60 maps span several blocks."""
    q, g = inputs.maps(30, 30, 16), inputs.maps(60, 30, 16)
    wq, wg = inputs.weights(30, 3), inputs.weights(30, 3)
    want = qaconv_match_reference(*map(torch.from_numpy, (q, g, wq, wg))).numpy()
    from_torch = tal_plugins.qaconv_match(*map(torch.from_numpy, (q, g, wq, wg)), backend="torch")
    from_numpy = tal_plugins.qaconv_match(q, g, wq, wg)
    for got in (from_torch.numpy(), from_numpy):
        np.testing.assert_allclose(got, want, rtol=0, atol=inputs.tolerance(want))
