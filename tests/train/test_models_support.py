"""Helpers shared by the tal_train.models tests (no tests here): plain references and tiny setups."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tal_train.models import TALConfig

TOL = dict(rtol=1e-4, atol=1e-5)


def tiny_config(**overrides) -> TALConfig:
    """The tiny preset at 64x32 (res4 4x2, res5 2x1) with two source domains."""
    return TALConfig.preset("tiny", **{"domains": ("a", "b"), "image_size": (64, 32), **overrides})


def randomize_norms(module: nn.Module) -> nn.Module:
    """Random affine and running statistics in every BatchNorm, so that branches differ."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return module


def unit_maps(*shape: int) -> Tensor:
    """Random maps [..., C, h, w], L2-normalized over C (as the necks produce them)."""
    return nn.functional.normalize(torch.randn(*shape), dim=-3)


def responses_reference(q: Tensor, g: Tensor) -> Tensor:
    """[Nq, Ng, 2 HW] = [max over gallery locations, max over query locations] by plain einsum."""
    s = torch.einsum("pcs,gcr->pgsr", q.flatten(2), g.flatten(2))
    return torch.cat((s.amax(dim=3), s.amax(dim=2)), dim=-1)


def ms_reference(head, responses: list[Tensor], training: bool) -> Tensor:
    """MS-QAConv written out: halves concatenated over scales, BN1d(1) over all elements,
    one FC shared by both halves, halves summed, BN1d(1). Uses copies of the head's statistics."""
    vq = torch.cat([r[..., :hw] for r, hw in zip(responses, head.hw)], dim=-1)
    vg = torch.cat([r[..., hw:] for r, hw in zip(responses, head.hw)], dim=-1)
    lead = vq.shape[:-1]

    def bn(x, m):
        return nn.functional.batch_norm(x, m.running_mean.clone(), m.running_var.clone(), m.weight,
                                        m.bias, training, 0.1, m.eps)

    v = torch.stack((vq, vg)).reshape(2, -1)
    normed = bn(v.reshape(1, 1, -1), head.bn).reshape(2, -1, vq.shape[-1])
    per_half = normed @ head.fc.weight[0] + head.fc.bias[0]
    return bn(per_half.sum(dim=0)[:, None], head.logit_bn).view(lead)
