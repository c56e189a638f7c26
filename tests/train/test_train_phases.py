"""One training step per phase changes exactly the parameters and statistics it should
(DESIGN.md section 2: per-domain DS, hybrid DS with a frozen backbone, hybrid DI)."""
from __future__ import annotations

import pytest
import torch

from tal_train.models import TALConfig, build_model
from tal_train.phases import (PhaseBatch, StepSettings, hybrid_di_phase, per_domain_phase,
                              train_iteration)
from tal_train.schedule import build_optimizer

SMALL = dict(image_size=(64, 32))


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(TALConfig.preset("tiny", domains=("a", "b"), **{**SMALL, **overrides}))


def _batch(seed: int = 1) -> PhaseBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return PhaseBatch(torch.randn(8, 3, 64, 32, generator=g), labels)


def _changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


# A score shift cancels in the triplet loss (positive minus negative), so the logit BN bias
# gets a zero gradient and keeps its value of 0 under weight decay: it is reached, not changed.
SHIFT_INVARIANT = ".logit_bn.bias"


def _step(model, phase: str, domain: int | None = None) -> tuple[set[str], set[str]]:
    """(state entries changed by one step, parameters that received a gradient)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, lr=0.1)
    batch = _batch()
    train_iteration(model.train(), optimizer, (phase,), [(domain, batch)] if domain is not None
                    else [], batch if domain is None else None, StepSettings())
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    return _changed(model, before), grads


def _check(changed: set[str], grads: set[str], params: set[str], stats: set[str]) -> None:
    assert grads == params
    assert changed == {n for n in params if not n.endswith(SHIFT_INVARIANT)} | stats


def _names(model, *roles: str) -> set[str]:
    ids = {id(p) for r in roles for p in model.parameter_groups()[r]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _stats(model, pattern) -> set[str]:
    params = {n for n, _ in model.named_parameters()}
    return {k for k in model.state_dict() if k not in params and pattern(k)}


def test_per_domain_step_updates_shared_expert_and_ds_head():
    model = _model()
    changed, grads = _step(model, "per_domain", domain=1)
    params = _names(model, "shared", "ds_head") | {
        n for n in _names(model, "expert_norms") if ".experts.1." in n}
    _check(changed, grads, params,
           _stats(model, lambda k: ".experts.1." in k or k.startswith("ds_head.")))
    assert not any(".experts.0." in k or ".di." in k or k.startswith(("msda_head", "di_head"))
                   for k in changed)


def test_hybrid_ds_step_updates_only_msda_head():
    model = _model()
    changed, grads = _step(model, "hybrid_ds")
    _check(changed, grads, _names(model, "msda_head"),
           _stats(model, lambda k: k.startswith("msda_head.")))


@pytest.mark.parametrize("di", [dict(di_norm="dabn"), dict(di_norm="bn"),
                                dict(di_norm="dabn", dabn_stats="own")])
def test_hybrid_di_step_updates_shared_di_norm_and_di_head(di):
    model = _model(**di)  # with own DABN statistics, those update too
    changed, grads = _step(model, "hybrid_di")
    _check(changed, grads, _names(model, "shared", "di_norm", "di_head"),
           _stats(model, lambda k: k.startswith("di_head.") or ".di." in k))
    assert not any(".experts." in k for k in changed)  # DABN reads the experts, never writes


def test_phase_functions_return_the_loss_and_leave_gradients():
    model = _model().train()
    loss = per_domain_phase(model, _batch(), 0, StepSettings(margin=16.0))
    assert loss > 0
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == _names(model, "shared", "ds_head") | {
        n for n in _names(model, "expert_norms") if ".experts.0." in n}
    model.zero_grad(set_to_none=True)
    hybrid_di_phase(model, _batch(), StepSettings())
    assert {n for n, p in model.named_parameters() if p.grad is not None} == _names(
        model, "shared", "di_norm", "di_head")


def test_iteration_reports_losses_per_phase():
    model = _model()
    batch = _batch()
    losses = train_iteration(model.train(), build_optimizer(model, 0.01), model.training_phases(),
                             [(0, batch), (1, _batch(2))], batch, StepSettings(clip=1.0))
    assert set(losses) == {"domain0", "domain1", "hybrid_ds", "hybrid_di", "total"}
    assert losses["total"] == pytest.approx(sum(v for k, v in losses.items() if k != "total"))
