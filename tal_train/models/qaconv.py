"""QAConv and MS-QAConv matching heads (paper Sec. 3.3, Fig. 4; Liao & Shao, ECCV 2020).

For a pair (p, g) with L2-normalized maps P, G in R^{HW x C}: S = P G^T, response vector
v = [max over gallery locations (indexed by query location), max over query locations (indexed
by gallery location)] (2 HW), and score = logit_bn(sum over the two halves of fc(bn(v))), with
``bn``, ``logit_bn`` BatchNorm1d(1) (statistics over every element of the batch of vectors) and
``fc`` Linear(HW, 1) shared by both halves. This is the official QAConv forward.

**MS-QAConv** (Fig. 4): one response vector per scale; for each half the scales are concatenated
(length sum_l HW_l), then the same BN-FC(sum HW_l -> 1)-sum-of-halves-BN. With one scale it is
exactly QAConv, so `QAConv` is `MSQAConvHead` with one scale plus the official API
(``make_kernel(probe)`` + ``forward(gallery)``, or ``forward(probe, gallery)``) and state-dict
keys (``bn.*``, ``fc.*``, ``logit_bn.*``).

Two paths, equal in eval mode (tested):

* ``forward(q_maps, g_maps)``: full response vectors from ``tal_plugins.qaconv_responses``; BN in
  training mode uses batch statistics over all pairs (training); in eval mode it runs over gallery
  chunks.
* ``score(q_maps, g_maps)``: projection form (`projection`), one ``tal_plugins.qaconv_match``
  call per scale with P = 1 column.

Maps are [N, C, h, w] per scale, in the head's scale order; a single tensor means one scale.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from tal_infer.features import match_layout
from tal_plugins import qaconv_responses

from .projection import HeadProjection, ScaleProjection, over_gallery_chunks, projection_scores

Maps = Union[Tensor, Sequence[Tensor]]


def bn_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-form scalar (scale, shift) of a BatchNorm1d(1): bn(x) = scale * x + shift."""
    scale = bn.weight[0] / torch.sqrt(bn.running_var[0] + bn.eps)
    return scale, bn.bias[0] - bn.running_mean[0] * scale


def as_list(maps: Maps) -> list[Tensor]:
    return [maps] if isinstance(maps, Tensor) else list(maps)


class MSQAConvHead(nn.Module):
    """MS-QAConv: BN-FC-BN on the per-scale response vectors concatenated per half."""

    def __init__(self, hw_per_scale: Sequence[int]):
        super().__init__()
        self.hw = tuple(int(hw) for hw in hw_per_scale)
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(sum(self.hw), 1)
        self.logit_bn = nn.BatchNorm1d(1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As official QAConv: BN reset, FC weights = 1 / length (an average of the responses)."""
        self.bn.reset_parameters()
        self.logit_bn.reset_parameters()
        with torch.no_grad():
            self.fc.weight.fill_(1.0 / sum(self.hw))

    def check_maps(self, maps: list[Tensor], stacked: bool = False) -> list[Tensor]:
        """`maps` if they fit this head: one per scale, [N, C, h, w] (stacked: [N, K, C, h, w])."""
        if len(maps) != len(self.hw):
            raise ValueError(f"expected {len(self.hw)} scales of maps, got {len(maps)}")
        for x, hw in zip(maps, self.hw):
            if x.dim() != (5 if stacked else 4) or x.shape[-2] * x.shape[-1] != hw:
                raise ValueError(f"map of shape {tuple(x.shape)} does not match HW = {hw}")
        return maps

    def score_responses(self, responses: Sequence[Tensor]) -> Tensor:
        """Scores [...] from response vectors per scale [..., 2 HW_l] ([query half, gallery half])."""
        lead = responses[0].shape[:-1]
        query_half = torch.cat([r[..., :hw] for r, hw in zip(responses, self.hw)], dim=-1)
        gallery_half = torch.cat([r[..., hw:] for r, hw in zip(responses, self.hw)], dim=-1)
        length = query_half.shape[-1]
        v = torch.stack((query_half, gallery_half), dim=-2).reshape(-1, 1, length)
        x = self.fc(self.bn(v).view(-1, length)).view(-1, 2).sum(dim=1, keepdim=True)
        return self.logit_bn(x).view(lead)

    def responses(self, q_maps: Maps, g_maps: Maps) -> list[Tensor]:
        """Full response vectors per scale, [Nq, Ng, 2 HW_l]."""
        qs, gs = self.check_maps(as_list(q_maps)), self.check_maps(as_list(g_maps))
        return [qaconv_responses(match_layout(q), match_layout(g)) for q, g in zip(qs, gs)]

    def forward(self, q_maps: Maps, g_maps: Maps) -> Tensor:
        """Scores [Nq, Ng] from full response vectors (training path; eval: gallery chunks)."""
        def run(q: Maps, g: Maps) -> Tensor:
            return self.score_responses(self.responses(q, g))

        if self.training:
            return run(q_maps, g_maps)
        return over_gallery_chunks(run, as_list(q_maps), as_list(g_maps), 2 * sum(self.hw))

    def projection(self) -> HeadProjection:
        """Eval form: per scale wq = wg = the FC weights of that scale [HW_l, 1]; (A, B) from BNs."""
        s1, t1 = bn_affine(self.bn)
        s2, t2 = bn_affine(self.logit_bn)
        w = self.fc.weight[0]
        # logit_bn(sum_halves fc(s1 v + t1)) = s2 s1 (w.v_q + w.v_g) + s2 * 2 (t1 sum(w) + b) + t2
        affine = torch.stack((s2 * s1, s2 * 2 * (t1 * w.sum() + self.fc.bias[0]) + t2))
        columns = torch.split(w[:, None], list(self.hw))
        return HeadProjection("ms", tuple(ScaleProjection(c, c) for c in columns), affine)

    def score(self, q_maps: Maps, g_maps: Maps) -> Tensor:
        """Scores [Nq, Ng] in projection form (eval statistics whatever the module mode)."""
        qs, gs = self.check_maps(as_list(q_maps)), self.check_maps(as_list(g_maps))
        return projection_scores(self.projection(), [match_layout(q) for q in qs],
                                 [match_layout(g) for g in gs])


class QAConv(MSQAConvHead):
    """The official single-scale QAConv, state-dict compatible (``bn``, ``fc``, ``logit_bn``)."""

    def __init__(self, num_features: int, height: int, width: int):
        super().__init__([height * width])
        self.num_features, self.height, self.width = num_features, height, width
        self.kernel: Tensor | None = None

    def make_kernel(self, probe_maps: Tensor) -> None:
        """Store the probe maps [P, C, h, w] for the following `forward(gallery_maps)` calls."""
        self.kernel = probe_maps

    def forward(self, maps: Tensor, gallery_maps: Tensor | None = None) -> Tensor:
        """Scores [P, G]: ``forward(probe, gallery)``, or ``forward(gallery)`` after make_kernel."""
        if gallery_maps is None:
            if self.kernel is None:
                raise RuntimeError("QAConv.forward(gallery) needs make_kernel(probe) first")
            maps, gallery_maps = self.kernel, maps
        for x in (maps, gallery_maps):
            if x.dim() != 4 or x.shape[1] != self.num_features:
                raise ValueError(f"expected [N, {self.num_features}, {self.height}, "
                                 f"{self.width}] maps, got {tuple(x.shape)}")
        return super().forward([maps], [gallery_maps])
