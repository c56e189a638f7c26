"""DABN attention (paper eq. 6) written out: a = softmax(W2 relu(W1 GAP(x))), no biases, on the
un-normalized input; and the DI stream output (eq. 5) with those weights."""
from __future__ import annotations

import pytest
import torch

from tal_train.models import DomainNorm, use_stream
from test_models_support import TOL, randomize_norms

C, K = 32, 3


def _norm() -> DomainNorm:
    norm = randomize_norms(DomainNorm(C, K, di_norm="dabn", reduction=4))
    with torch.no_grad():  # logits of about one unit: neither uniform nor saturated
        for layer in (norm.di.attention[0], norm.di.attention[2]):
            layer.weight.normal_(0.0, 0.5)
    return norm


def _inputs() -> torch.Tensor:
    """Maps whose spatial mean and max differ per channel (skewed, with a shifted mean)."""
    return torch.randn(5, C, 6, 4).exp() - 1.5


def eq6(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    gap = x.mean(dim=(2, 3))                        # [N, C]
    hidden = torch.clamp(gap @ w1.T, min=0)         # [N, C / r]
    return torch.softmax(hidden @ w2.T, dim=1)      # [N, K]


def branch(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Expert i's eval-form BN (running statistics), eq. 3-4 written out."""
    v = lambda t: t[None, :, None, None]  # noqa: E731
    return v(bn.weight) * (x - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + bn.eps) \
        + v(bn.bias)


@pytest.mark.parametrize("training", [False, True])
def test_attention_is_eq6_written_out(training):
    norm = _norm().train(training)
    w1, w2 = norm.di.attention[0].weight.detach(), norm.di.attention[2].weight.detach()
    assert norm.di.attention[0].bias is None and norm.di.attention[2].bias is None
    assert w1.shape == (8, C) and w2.shape == (K, 8)  # hidden = max(C // r, 8)
    x = _inputs()
    want = eq6(x, w1, w2)
    with torch.no_grad():
        got = norm.di.weights(x)
        max_pooled = eq6(x.amax(dim=(2, 3), keepdim=True), w1, w2)
    torch.testing.assert_close(got, want, **TOL)
    assert (want - max_pooled).abs().max() > 0.02  # these inputs tell average from max pooling
    assert (want - 1 / K).abs().max() > 0.05  # not a uniform mix

    with use_stream(norm, "di"), torch.no_grad():
        out = norm(x)
    mixed = sum(want[:, i, None, None, None] * branch(norm.experts[i], x) for i in range(K))
    torch.testing.assert_close(out, mixed, **TOL)


def test_attention_gradient_reaches_both_layers():
    norm = _norm().train()
    with use_stream(norm, "di"):
        norm(_inputs()).square().mean().backward()
    for layer in (norm.di.attention[0], norm.di.attention[2]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().max() > 0
