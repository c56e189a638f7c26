"""What one TAL step computes (tal_train.phases): each phase's loss is the selected triplet loss
of the model's own scores, the gradients are exactly that loss's gradients (stale ones
discarded), and gradient clipping bounds the norm the optimizer steps with.

Every expectation is recomputed on an identical twin of the model, through ``model(images,
phase, domain)`` and the loss functions of `tal_train.losses`, never through `tal_train.phases`.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tal_train.losses import batch_all_triplet, batch_hard_triplet
from tal_train.models import TALConfig, build_model
from tal_train.phases import (PhaseBatch, StepSettings, hybrid_di_phase, hybrid_ds_phase,
                              per_domain_phase, train_iteration)

LOSSES = {"hard": batch_hard_triplet, "all": batch_all_triplet}
MARGIN = 0.3  # small, so the hinge is active for some triplets and not for others
LR = 0.05


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = TALConfig.preset("tiny", domains=("a", "b"), image_size=(64, 32))
    return build_model(config).train()


def _batch(seed: int) -> PhaseBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return PhaseBatch(torch.randn(8, 3, 64, 32, generator=g), labels)


def _run_phase(model, phase: str, batch: PhaseBatch, settings: StepSettings) -> float:
    if phase == "per_domain":
        return per_domain_phase(model, batch, 1, settings)
    if phase == "hybrid_ds":
        return hybrid_ds_phase(model, batch, settings)
    return hybrid_di_phase(model, batch, settings)


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_grads(got: dict, want: dict) -> None:
    assert {n for n, g in got.items() if g is None} == {n for n, g in want.items() if g is None}
    for name, g in want.items():
        if g is not None:
            torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


def _total_norm(grads: dict) -> float:
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads.values() if g is not None])))


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("phase", ["per_domain", "hybrid_ds", "hybrid_di"])
def test_phase_loss_and_gradients_are_the_selected_mining_of_the_model_scores(phase, mining):
    model = _model()
    twin = copy.deepcopy(model)
    batch = _batch(1)
    loss = _run_phase(model, phase, batch, StepSettings(margin=MARGIN, mining=mining))

    scores = twin(batch.images, phase, 1 if phase == "per_domain" else None)
    want = LOSSES[mining](scores, batch.labels, MARGIN).loss
    other = LOSSES["all" if mining == "hard" else "hard"](scores, batch.labels, MARGIN).loss
    assert abs(want.item() - other.item()) > 0.05 * abs(want.item())  # minings tell apart here
    assert loss == pytest.approx(want.item(), rel=1e-5)
    want.backward()
    _assert_same_grads(_grads(model), _grads(twin))


def _iteration_inputs():
    return [(0, _batch(2)), (1, _batch(3))], _batch(4)


def _reference_iteration(twin, mining: str) -> tuple[dict[str, float], dict]:
    """The losses and summed gradients of one iteration, phase by phase on the twin (the phases
    run in order, so each sees the running statistics its predecessors left)."""
    domain_batches, hybrid = _iteration_inputs()
    twin.zero_grad(set_to_none=True)
    losses, total = {}, 0
    runs = [(f"domain{d}", "per_domain", b, d) for d, b in domain_batches]
    runs += [("hybrid_ds", "hybrid_ds", hybrid, None), ("hybrid_di", "hybrid_di", hybrid, None)]
    for key, phase, batch, domain in runs:
        loss = LOSSES[mining](twin(batch.images, phase, domain), batch.labels, MARGIN).loss
        losses[key] = loss.item()
        total = total + loss
    total.backward()
    return losses, _grads(twin)


def _iterate(model, clip: float, mining: str = "all") -> dict[str, float]:
    domain_batches, hybrid = _iteration_inputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    settings = StepSettings(margin=MARGIN, mining=mining, clip=clip)
    return train_iteration(model, optimizer, model.training_phases(), domain_batches, hybrid,
                           settings)


def test_iteration_discards_stale_gradients_and_sums_the_phase_losses():
    model = _model()
    twin = copy.deepcopy(model)
    for p in model.parameters():  # left over from an earlier iteration
        p.grad = torch.full_like(p, 1e3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = _iterate(model, clip=0.0)
    want_losses, want_grads = _reference_iteration(twin, "all")
    assert losses.pop("total") == pytest.approx(sum(want_losses.values()), rel=1e-5)
    assert losses == pytest.approx(want_losses, rel=1e-5)
    _assert_same_grads(_grads(model), want_grads)
    for name, p in model.named_parameters():  # plain SGD stepped with exactly these gradients
        g = want_grads[name]
        step = torch.zeros_like(p) if g is None else -LR * g
        torch.testing.assert_close(p.detach() - before[name], step, rtol=1e-4, atol=2e-6,
                                   msg=name)


def test_tiny_clip_bounds_the_gradient_norm_and_keeps_its_direction():
    model = _model()
    twin = copy.deepcopy(model)
    clip = 1e-3
    _iterate(model, clip=clip)
    _, raw = _reference_iteration(twin, "all")
    raw_norm = _total_norm(raw)
    assert raw_norm > 100 * clip  # the bound is really exercised
    clipped = _grads(model)
    assert _total_norm(clipped) == pytest.approx(clip, rel=1e-3)
    factor = clip / raw_norm
    _assert_same_grads(clipped, {n: None if g is None else g * factor for n, g in raw.items()})
