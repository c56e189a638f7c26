"""The two readings of DABN (eqs. 3-5, ``dabn_stats``): ``own`` written out against a plain
reference in eval and in training, the experts left alone, the config switch and its errors,
old configs, and ImageNet statistics loading into the DI stream's own statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tal_infer.errors import TalError
from tal_train.models import DABN, DomainNorm, TALConfig, build_model, load_pretrained, use_stream
from test_models_backbone import imagenet_file
from test_models_support import TOL, randomize_norms, tiny_config

C, K = 12, 3


def own_norm(di_norm: str = "dabn") -> DomainNorm:
    torch.manual_seed(1)
    norm = randomize_norms(DomainNorm(C, K, di_norm=di_norm, reduction=4, dabn_stats="own"))
    with torch.no_grad():
        norm.di.running_mean.normal_(0.0, 0.3)
        norm.di.running_var.uniform_(0.5, 1.5)
    return norm


def mixed_affine(norm: DomainNorm, a: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with one shared x_hat: sum_i a_i (g_i x_hat + b_i), written out."""
    return sum(a[:, i, None, None, None] * (norm.experts[i].weight[None, :, None, None] * x_hat
                                            + norm.experts[i].bias[None, :, None, None])
               for i in range(K))


def test_own_eval_normalizes_with_the_di_statistics():
    norm = own_norm().eval()
    x = torch.randn(4, C, 5, 3) * 2 + 1
    a = norm.di.weights(x)
    x_hat = ((x - norm.di.running_mean[None, :, None, None])
             / torch.sqrt(norm.di.running_var[None, :, None, None] + 1e-5))
    with use_stream(norm, "di"):
        torch.testing.assert_close(norm(x), mixed_affine(norm, a, x_hat), **TOL)


def test_own_training_uses_batch_statistics_updates_only_its_own_and_not_the_experts():
    norm = own_norm().train()
    plain = nn.BatchNorm2d(C, affine=False)  # the reference for x_hat and the running update
    plain.running_mean.copy_(norm.di.running_mean)
    plain.running_var.copy_(norm.di.running_var)
    experts = {k: v.clone() for k, v in norm.experts.state_dict().items()}
    x = (torch.randn(6, C, 5, 3) * 2 + 1).requires_grad_()
    a = norm.di.weights(x).detach()
    with use_stream(norm, "di"):
        out = norm(x)
    torch.testing.assert_close(out, mixed_affine(norm, a, plain(x)).detach(), **TOL)
    torch.testing.assert_close(norm.di.running_mean, plain.running_mean, **TOL)
    torch.testing.assert_close(norm.di.running_var, plain.running_var, **TOL)
    assert int(norm.di.num_batches_tracked) == 1
    out.square().sum().backward()
    assert all(p.grad is not None for p in norm.di.attention.parameters())
    assert all(p.grad is None for p in norm.experts.parameters())  # experts read detached
    for key, value in norm.experts.state_dict().items():
        torch.testing.assert_close(value, experts[key], rtol=0, atol=0)


def test_own_avg_is_the_mean_expert_affine_on_own_statistics():
    norm = own_norm("avg").eval()
    x = torch.randn(3, C, 4, 2)
    x_hat = ((x - norm.di.running_mean[None, :, None, None])
             / torch.sqrt(norm.di.running_var[None, :, None, None] + 1e-5))
    with use_stream(norm, "di"):
        torch.testing.assert_close(norm(x), mixed_affine(norm, torch.full((3, K), 1 / K), x_hat),
                                   **TOL)


def test_branch_affines_reproduce_eval_dabn_in_both_readings():
    """The form the export folds: x * (a @ scale) + (a @ shift) equals the module's output."""
    for norm in (own_norm().eval(), randomize_norms(DomainNorm(C, K, reduction=4)).eval()):
        x = torch.randn(3, C, 4, 2)
        a = norm.di.weights(x)
        scale, shift = norm.di.branch_affines(norm.experts)
        want = x * (a @ scale)[:, :, None, None] + (a @ shift)[:, :, None, None]
        with use_stream(norm, "di"):
            torch.testing.assert_close(norm(x), want, **TOL)


def test_state_dict_layout_of_own_statistics():
    keys = set(own_norm().state_dict())
    assert {"di.running_mean", "di.running_var", "di.num_batches_tracked",
            "di.attention.0.weight", "di.attention.2.weight"} <= keys
    assert not {"di.running_mean"} & set(DomainNorm(C, K).state_dict())
    with pytest.raises(ValueError, match="stats"):
        DABN(C, K, stats="mine")


def test_config_switch_default_old_configs_and_errors():
    assert tiny_config().dabn_stats == "experts"
    stored = tiny_config().to_dict()
    del stored["dabn_stats"]  # a checkpoint written before the switch existed
    assert TALConfig.from_dict(stored).dabn_stats == "experts"
    model = build_model(tiny_config(dabn_stats="own"))
    assert all(m.stats == "own" for m in model.modules() if isinstance(m, DABN))
    assert TALConfig.from_dict(model.config.to_dict()) == model.config
    with pytest.raises(TalError, match="dabn_stats"):
        tiny_config(dabn_stats="batch")
    for bad in (dict(di_norm="bn"), dict(streams=("ds",))):
        with pytest.raises(TalError, match="needs the DI stream"):
            tiny_config(dabn_stats="own", **bad)


def test_imagenet_statistics_fill_the_own_statistics(tmp_path):
    path, plain = imagenet_file(tmp_path, "resnet18_ibn_b_x0_25")
    model = build_model(tiny_config(dabn_stats="own", domains=("a", "b", "c")))
    report = load_pretrained(model, str(path))
    target, source = model.backbone.state_dict(), plain.state_dict()
    own = [k for k in target if ".di.running_" in k]
    assert own and set(own) <= set(report.loaded)
    for key in own:
        torch.testing.assert_close(target[key], source[key.replace(".di.", ".")], rtol=0, atol=0)
