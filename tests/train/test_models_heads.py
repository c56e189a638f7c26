"""QAConv / MS-QAConv / MSDA-QAConv heads against written-out references (official QAConv
forward, explicit formulas on full response vectors, the docs/bundle.md projection formulas)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tal_train.models import MSDAQAConvHead, MSQAConvHead, QAConv, msda_hidden_width
from tal_train.models import projection as projection_module
from test_models_support import (TOL, ms_reference, randomize_norms, responses_reference,
                                 unit_maps)

C = 16


def official_state(hw: int) -> dict[str, torch.Tensor]:
    """A QAConv state dict in the official layout, with random values."""
    state = {}
    for bn in ("bn", "logit_bn"):
        state.update({f"{bn}.weight": torch.rand(1) + 0.5, f"{bn}.bias": torch.randn(1),
                      f"{bn}.running_mean": torch.randn(1) * 0.3,
                      f"{bn}.running_var": torch.rand(1) + 0.5,
                      f"{bn}.num_batches_tracked": torch.tensor(7)})
    state.update({"fc.weight": torch.randn(1, hw), "fc.bias": torch.randn(1)})
    return state


def official_forward(state: dict, prob: torch.Tensor, gal: torch.Tensor, training: bool):
    """ShengcaiLiao/QAConv reid/models/qaconv.py (V1.3.1) forward(prob_fea, gal_fea), on a state
    dict; BatchNorm through F.batch_norm, which updates the given running statistics in place."""
    hw = prob.shape[2] * prob.shape[3]
    prob_size, gal_size = prob.size(0), gal.size(0)
    prob_fea = prob.reshape(prob_size, prob.size(1), hw)
    gal_fea = gal.reshape(gal_size, gal.size(1), hw)
    score = torch.einsum("p c s, g c r -> p g r s", prob_fea, gal_fea)
    score = torch.cat((score.max(dim=2)[0], score.max(dim=3)[0]), dim=-1)
    score = score.view(-1, 1, hw)
    score = F.batch_norm(score, state["bn.running_mean"], state["bn.running_var"],
                         state["bn.weight"], state["bn.bias"], training).view(-1, hw)
    score = F.linear(score, state["fc.weight"], state["fc.bias"])
    score = score.view(-1, 2).sum(dim=1, keepdim=True)
    score = F.batch_norm(score, state["logit_bn.running_mean"], state["logit_bn.running_var"],
                         state["logit_bn.weight"], state["logit_bn.bias"], training)
    return score.view(prob_size, gal_size)


def official_kernel_forward(state: dict, prob: torch.Tensor, gal: torch.Tensor):
    """The older official API (make_kernel(probe) + forward(gallery)), eval mode: the 6-D einsum
    'g c h w, p c y x -> g p y x h w', halves in the other order, result transposed to [p, g]."""
    hw = prob.shape[2] * prob.shape[3]
    score = torch.einsum("g c h w, p c y x -> g p y x h w", gal, prob)
    score = score.reshape(gal.size(0), -1, hw, hw)
    score = torch.cat((score.max(dim=2)[0], score.max(dim=3)[0]), dim=-1).view(-1, 1, hw)
    score = F.batch_norm(score, state["bn.running_mean"], state["bn.running_var"],
                         state["bn.weight"], state["bn.bias"], False).view(-1, hw)
    score = F.linear(score, state["fc.weight"], state["fc.bias"]).view(-1, 2).sum(1, keepdim=True)
    score = F.batch_norm(score, state["logit_bn.running_mean"], state["logit_bn.running_var"],
                         state["logit_bn.weight"], state["logit_bn.bias"], False)
    return score.view(gal.size(0), -1).t()


def test_qaconv_loads_official_state_dict_and_matches_official_forward():
    torch.manual_seed(0)
    h, w = 4, 3
    state = official_state(h * w)
    qaconv = QAConv(C, h, w)
    qaconv.load_state_dict(state)  # strict: exactly the official keys
    prob, gal = unit_maps(5, C, h, w), unit_maps(7, C, h, w)

    qaconv.eval()
    reference = official_forward({k: v.clone() for k, v in state.items()}, prob, gal, False)
    torch.testing.assert_close(qaconv(prob, gal), reference, **TOL)
    torch.testing.assert_close(official_kernel_forward(state, prob, gal), reference, **TOL)
    qaconv.make_kernel(prob)
    torch.testing.assert_close(qaconv(gal), reference, **TOL)
    torch.testing.assert_close(qaconv.score(prob, gal), reference, **TOL)

    qaconv.train()  # batch statistics over all pairs, and the same running-statistics update
    train_state = {k: v.clone() for k, v in state.items()}
    torch.testing.assert_close(qaconv(prob, gal), official_forward(train_state, prob, gal, True),
                               **TOL)
    for bn in ("bn", "logit_bn"):
        for stat in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(getattr(qaconv, bn), stat),
                                       train_state[f"{bn}.{stat}"], **TOL)


def test_qaconv_rejects_wrong_maps():
    qaconv = QAConv(C, 4, 3).eval()
    with pytest.raises(RuntimeError, match="make_kernel"):
        qaconv(unit_maps(2, C, 4, 3))
    with pytest.raises(ValueError, match="HW = 12"):
        qaconv.score(unit_maps(2, C, 4, 2), unit_maps(2, C, 4, 2))


@pytest.mark.parametrize("training", [False, True])
def test_ms_head_equals_written_out_formula(training):
    torch.manual_seed(1)
    head = randomize_norms(MSQAConvHead([12, 2]))
    with torch.no_grad():
        head.fc.weight.normal_()
    head.train(training)
    q = [unit_maps(4, C, 4, 3), unit_maps(4, C, 2, 1)]
    g = [unit_maps(6, C, 4, 3), unit_maps(6, C, 2, 1)]
    responses = [responses_reference(a, b) for a, b in zip(q, g)]
    expected = ms_reference(head, responses, training)
    torch.testing.assert_close(head(q, g), expected, **TOL)


def test_ms_head_projection_path_equals_full_vectors_and_chunks(monkeypatch):
    torch.manual_seed(2)
    head = randomize_norms(MSQAConvHead([12, 2])).eval()
    with torch.no_grad():
        head.fc.weight.normal_()
        head.fc.bias.normal_()
    q = [unit_maps(5, C, 4, 3), unit_maps(5, C, 2, 1)]
    g = [unit_maps(9, C, 4, 3), unit_maps(9, C, 2, 1)]
    full = head(q, g)
    torch.testing.assert_close(head.score(q, g), full, **TOL)
    monkeypatch.setattr(projection_module, "gallery_chunk", lambda *args, **kw: 4)
    torch.testing.assert_close(head(q, g), full, **TOL)
    torch.testing.assert_close(head.score(q, g), full, **TOL)


def msda_reference(head: MSDAQAConvHead, q_maps, g_maps) -> torch.Tensor:
    """MSDA-QAConv in eval written out on full response vectors: per scale FC1 on the
    concatenation [v_1 .. v_K], ReLU, FC2, softmax over experts, weighted sum, then MS-QAConv."""
    k = head.num_domains
    mixed = []
    for l, (q, g) in enumerate(zip(q_maps, g_maps)):
        v = [responses_reference(q[:, i], g[:, i]) for i in range(k)]
        if head.attention is None:
            alpha = torch.full((*v[0].shape[:-1], k), 1.0 / k)
        else:
            fc1, fc2 = head.attention[l][0], head.attention[l][2]
            hidden = torch.relu(torch.cat(v, dim=-1) @ fc1.weight.t() + fc1.bias)
            alpha = torch.softmax(hidden @ fc2.weight.t() + fc2.bias, dim=-1)
        mixed.append(sum(alpha[..., i:i + 1] * v[i] for i in range(k)))
    return ms_reference(head.ms, mixed, training=False)


@pytest.mark.parametrize("attention", [True, False])
def test_msda_projection_and_full_paths_equal_explicit_formula(attention):
    torch.manual_seed(3)
    k = 3
    head = randomize_norms(MSDAQAConvHead(k, [12, 2], attention=attention)).eval()
    with torch.no_grad():
        head.ms.fc.weight.normal_()
    q = [unit_maps(4, k, C, 4, 3), unit_maps(4, k, C, 2, 1)]
    g = [unit_maps(6, k, C, 4, 3), unit_maps(6, k, C, 2, 1)]
    expected = msda_reference(head, q, g)
    torch.testing.assert_close(head(q, g), expected, **TOL)
    torch.testing.assert_close(head.score(q, g), expected, **TOL)
    proj = head.projection()
    assert proj.mode == ("attention" if attention else "mean")
    width = 1 + msda_hidden_width(k, 12) if attention else 1
    assert tuple(proj.scales[0].wq.shape) == (k, 12, width)


def test_msda_attention_rows_sum_to_one_and_train_path_has_gradients():
    torch.manual_seed(4)
    k = 2
    head = MSDAQAConvHead(k, [8]).train()
    q = unit_maps(4, k, C, 4, 2).requires_grad_()
    v = torch.stack([responses_reference(q[:, i], q[:, i]) for i in range(k)], dim=2)
    alpha = head.alphas(0, v)
    assert alpha.shape == (4, 4, k)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4, 4))
    assert (alpha > 0).all() and alpha.std() > 0
    scores = head([q], [q])
    (scores * torch.randn_like(scores)).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("k, hw, expected", [(3, 192, 72), (3, 48, 18), (2, 8, 8), (8, 1024, 256)])
def test_msda_hidden_width(k, hw, expected):
    assert msda_hidden_width(k, hw) == expected
