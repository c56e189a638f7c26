"""DomainNorm: DSBN experts, DABN (eqs. 5-6) and its ablations, stream selection."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tal_train.models import DABN, DomainNorm, set_stream, use_stream
from test_models_support import TOL, randomize_norms

C, K = 12, 3


def make_norm(di_norm: str | None = "dabn") -> DomainNorm:
    torch.manual_seed(0)
    return randomize_norms(DomainNorm(C, K, di_norm=di_norm, reduction=4))


def branch(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 with the branch's running statistics, written out."""
    view = lambda t: t[None, :, None, None]  # noqa: E731
    return (view(bn.weight) * (x - view(bn.running_mean)) / torch.sqrt(view(bn.running_var) + bn.eps)
            + view(bn.bias))


def test_expert_streams_are_the_dsbn_branches():
    norm = make_norm().eval()
    x = torch.randn(4, C, 5, 3)
    for i in range(K):
        with use_stream(norm, i):
            torch.testing.assert_close(norm(x), branch(norm.experts[i], x), **TOL)


@pytest.mark.parametrize("k", range(K))
def test_dabn_with_one_hot_attention_equals_that_expert(monkeypatch, k):
    norm = make_norm().eval()
    x = torch.randn(4, C, 5, 3)
    monkeypatch.setattr(DABN, "weights", lambda self, inp: nn.functional.one_hot(
        torch.full((inp.shape[0],), k), K).float())
    with use_stream(norm, "di"):
        out = norm(x)
    with use_stream(norm, k):
        torch.testing.assert_close(out, norm(x), **TOL)


@pytest.mark.parametrize("training", [False, True])
def test_dabn_equals_eq5_with_running_statistics_and_leaves_experts_alone(training):
    norm = make_norm().train(training)
    x = torch.randn(4, C, 5, 3) * 2 + 1
    before = {k: v.clone() for k, v in norm.experts.state_dict().items()}
    a = norm.di.weights(x)
    assert a.shape == (4, K)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(4))
    assert (a > 0).all() and (a[0] - a[1]).abs().max() > 0  # input-dependent rows
    expected = sum(a[:, i, None, None, None] * branch(norm.experts[i], x) for i in range(K))
    with use_stream(norm, "di"):
        out = norm(x)
    torch.testing.assert_close(out, expected, **TOL)
    for key, value in norm.experts.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_avg_equals_mean_of_branches_and_has_no_parameters():
    norm = make_norm("avg").eval()
    x = torch.randn(4, C, 5, 3)
    with use_stream(norm, "di"):
        out = norm(x)
    expected = sum(branch(bn, x) for bn in norm.experts) / K
    torch.testing.assert_close(out, expected, **TOL)
    assert list(norm.di.parameters()) == []


def test_bn_variant_is_a_separate_batchnorm():
    norm = make_norm("bn").train()
    plain = nn.BatchNorm2d(C)
    plain.load_state_dict(norm.di.state_dict())
    x = torch.randn(6, C, 5, 3)
    with use_stream(norm, "di"):
        torch.testing.assert_close(norm(x), plain(x), **TOL)
    torch.testing.assert_close(norm.di.running_mean, plain.running_mean, **TOL)
    assert not torch.equal(norm.di.running_mean, norm.experts[0].running_mean)


@pytest.mark.parametrize("training", [False, True])
def test_tiled_streams_equal_separate_calls(training):
    norm = make_norm().train(training)
    twin = copy.deepcopy(norm)  # training updates running statistics: give each run its own
    x = torch.randn(4, C, 5, 3)
    streams = (2, 0, "di")
    separate = []
    for s in streams:
        with use_stream(norm, s):
            separate.append(norm(x))
    with use_stream(twin, streams):
        tiled = twin(x.repeat(3, 1, 1, 1))
    torch.testing.assert_close(tiled, torch.cat(separate), **TOL)
    for key, value in norm.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value, **TOL)


def test_stream_selection_errors_and_restore():
    norm = make_norm(di_norm=None)
    x = torch.randn(2, C, 3, 3)
    with pytest.raises(RuntimeError, match="use_stream"):
        norm(x)
    set_stream(norm, 1)
    with use_stream(norm, 0):
        assert norm.stream == 0
        with pytest.raises(ValueError, match="expert index"):
            with use_stream(norm, K):
                norm(x)
        with pytest.raises(ValueError, match="no DI stream"):
            with use_stream(norm, "di"):
                norm(x)
    assert norm.stream == 1
    with pytest.raises(ValueError, match="multiple"), use_stream(norm, (0, 1)):
        norm(torch.randn(3, C, 3, 3))


def test_state_dict_layout_for_pretrained_copying():
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    experts = {f"experts.{i}.{n}" for i in range(2) for n in bn_keys}
    assert set(DomainNorm(C, 2, di_norm="dabn").state_dict()) == experts | {
        "di.attention.0.weight", "di.attention.2.weight"}
    assert set(DomainNorm(C, 2, di_norm="bn").state_dict()) == experts | {f"di.{n}" for n in bn_keys}
    assert set(DomainNorm(C, 2, di_norm="avg").state_dict()) == experts
