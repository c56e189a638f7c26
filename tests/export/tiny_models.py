"""Tiny TAL models with randomized statistics, affines and heads (so that folding and the
projection heads are exercised with non-trivial numbers) and their checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tal_train.checkpoint import save_checkpoint
from tal_train.models import DABN, TALConfig, TALModel, build_model

DOMAINS = ("cam-a", "cam-b", "cam-c")


def randomized_model(seed: int = 0, **overrides) -> TALModel:
    """A tiny model whose BN statistics/affines, instance-norm affines, DABN attention (and own
    statistics) and head layers are random (fresh init would make every expert identical and every BN the identity)."""
    torch.manual_seed(seed)
    model = build_model(TALConfig.preset("tiny", domains=DOMAINS, **overrides))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, DABN) and m.stats == "own":  # the DI stream's own statistics
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def write_checkpoint(path: Path, model: TALModel, run_name: str = "tiny-run") -> Path:
    return save_checkpoint(path, model_state=model.state_dict(), config=model.config.to_dict(),
                           epoch=3, run_name=run_name)


def random_descriptor_head(model: TALModel, dim: int = 32, seed: int = 0):
    """A descriptor head for ``model`` with random weights (what distillation would train)."""
    from tal_train.distill import _item_shapes
    from tal_train.models.descriptor import DescriptorHead

    torch.manual_seed(seed)
    return DescriptorHead(_item_shapes(model), dim=dim, reduced=4, hidden=64).eval()


def stand_in_graphs(model: TALModel, folder: Path, *args, **kwargs) -> dict:
    """Stands in for `tal_export.bundle._write_graphs` (the slow graph export) where only
    folders, names and options are under test."""
    (folder / "extractor.onnx").write_bytes(b"graph")
    return model.projection_form()
