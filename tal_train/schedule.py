"""Optimizer and learning-rate schedule (paper Sec. 4.1; QAConv-GS).

SGD with momentum 0.9 and weight decay 5e-4; the lr is multiplied by 0.1 at each milestone epoch
(paper: lr 0.005, x0.1 after epoch 20, stop at 30). ImageNet-initialized backbone weights train
at ``backbone_lr_mult`` x lr (QAConv-GS: 0.1; 1.0 for a randomly initialized backbone); new
layers (necks, heads, DABN attention) always at the full lr. The schedule steps once per epoch.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch.optim.lr_scheduler import MultiStepLR

from .models import TALModel

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
GAMMA = 0.1


def default_milestones(epochs: int) -> list[int]:
    """The paper's shape for any length: one x0.1 step after two thirds of the epochs."""
    return [max(1, round(2 * epochs / 3))] if epochs > 1 else []


def build_optimizer(model: TALModel, lr: float, backbone_lr_mult: float = 1.0,
                    weight_decay: float = WEIGHT_DECAY, nesterov: bool = False) -> torch.optim.SGD:
    """SGD over two groups: pretrained backbone weights (lr x mult) and everything else
    (``nesterov``: Nesterov momentum, as QAConv-GS v2.0)."""
    backbone, new = [], []
    for name, p in model.named_parameters():
        pretrained = name.startswith("backbone.") and ".attention." not in name
        (backbone if pretrained else new).append(p)
    groups = [{"params": backbone, "lr": lr * backbone_lr_mult}, {"params": new, "lr": lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=weight_decay,
                           nesterov=nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int]) -> MultiStepLR:
    return MultiStepLR(optimizer, list(milestones), gamma=GAMMA)


def scheduler_state(scheduler: MultiStepLR) -> dict:
    """The scheduler state with plain containers only (its milestones Counter as a dict)."""
    state = dict(scheduler.state_dict())
    state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(scheduler: MultiStepLR, state: dict) -> None:
    scheduler.load_state_dict({**state, "milestones": Counter(state["milestones"])})
