"""One TAL training iteration: the three phases of paper Sec. 3, one small function each.

1. `per_domain_phase`: a batch of domain i through expert i and MS-QAConv(DS) (``ds_head``);
2. `hybrid_ds_phase`: the hybrid batch through all experts, backbone frozen, MSDA-QAConv learns;
3. `hybrid_di_phase`: the same hybrid batch through the DI stream and MS-QAConv(DI).

Which parameters each phase reaches is decided by the model (`TALModel.forward`); a phase here
only scores its batch, applies the loss (`losses.score_loss`) and back-propagates (gradients
accumulate over the phases, so the iteration minimizes their sum). `train_iteration` runs the
phases the model trains, clips the gradient norm and makes one optimizer step. Calls go through
``model(...)`` so a DistributedDataParallel wrapper averages the gradients of every phase.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .losses import DEFAULT_MARGIN, score_loss

DEFAULT_CLIP = 512.0


@dataclass
class StepSettings:
    """How a phase steps: loss ("triplet" / "pairwise", `losses`), triplet margin and mining
    ("hard" / "all"), gradient clipping, AMP (CUDA only; scaler with it)."""
    margin: float = DEFAULT_MARGIN
    mining: str = "hard"
    loss: str = "triplet"
    clip: float = DEFAULT_CLIP
    amp: bool = False
    scaler: torch.amp.GradScaler | None = None


@dataclass(frozen=True)
class PhaseBatch:
    """Images [B, 3, H, W] and identity labels [B] of one batch (on the training device)."""
    images: Tensor
    labels: Tensor


def _loss_phase(model: nn.Module, batch: PhaseBatch, settings: StepSettings, phase: str,
                   domain: int | None = None) -> float:
    autocast = (torch.autocast("cuda", dtype=torch.float16) if settings.amp else nullcontext())
    with autocast:
        scores = model(batch.images, phase, domain)
    loss = score_loss(settings.loss, settings.mining, scores, batch.labels,
                      settings.margin).loss
    (settings.scaler.scale(loss) if settings.scaler is not None else loss).backward()
    return loss.item()


def per_domain_phase(model: nn.Module, batch: PhaseBatch, domain: int,
                     settings: StepSettings) -> float:
    """Phase 1: expert `domain` on its own domain's batch; returns the loss."""
    return _loss_phase(model, batch, settings, "per_domain", domain)


def hybrid_ds_phase(model: nn.Module, batch: PhaseBatch, settings: StepSettings) -> float:
    """Phase 2: frozen experts on the hybrid batch, only MSDA-QAConv learns; returns the loss."""
    return _loss_phase(model, batch, settings, "hybrid_ds")


def hybrid_di_phase(model: nn.Module, batch: PhaseBatch, settings: StepSettings) -> float:
    """Phase 3: the DI stream on the hybrid batch; returns the loss."""
    return _loss_phase(model, batch, settings, "hybrid_di")


def train_iteration(model: nn.Module, optimizer: torch.optim.Optimizer, phases: Sequence[str],
                    domain_batches: Sequence[tuple[int, PhaseBatch]],
                    hybrid: PhaseBatch | None, settings: StepSettings) -> dict[str, float]:
    """Zero the gradients, run `phases`, clip, step. Returns the losses: ``domain<i>`` per
    domain batch, ``hybrid_ds``, ``hybrid_di`` and their ``total``."""
    optimizer.zero_grad(set_to_none=True)
    losses: dict[str, float] = {}
    if "per_domain" in phases:
        for domain, batch in domain_batches:
            losses[f"domain{domain}"] = per_domain_phase(model, batch, domain, settings)
    if hybrid is not None and "hybrid_ds" in phases:
        losses["hybrid_ds"] = hybrid_ds_phase(model, hybrid, settings)
    if hybrid is not None and "hybrid_di" in phases:
        losses["hybrid_di"] = hybrid_di_phase(model, hybrid, settings)
    if settings.scaler is not None:
        settings.scaler.unscale_(optimizer)
    if settings.clip > 0:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                 settings.clip)
    if settings.scaler is not None:
        settings.scaler.step(optimizer)
        settings.scaler.update()
    else:
        optimizer.step()
    losses["total"] = sum(losses.values())
    return losses
