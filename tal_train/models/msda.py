"""MSDA-QAConv: the domain-adaptive multi-scale head of the DS stream (paper Sec. 3.1 eq. 2,
Sec. 3.3 "MSDA-QAConv").

An image without a domain label goes through all K experts; per scale l and expert i the pair
gets a QAConv response vector v_{i,l} (2 HW_l). Domain attention per scale, as eq. 6 but on the
responses: ``alpha_l = softmax(FC2 relu(FC1 [v_{1,l} .. v_{K,l}]))`` over the K experts (FC1 on
the raw concatenated vectors, with biases), ``v_l = sum_i alpha_{l,i} v_{i,l}``, then the head's
own MS-QAConv (BN-FC-BN) on [v_1 .. v_L].

**Hidden width** (not given in the paper): ``clamp(K * 2 * HW_l // r, 8, 256)`` with r = 16, the
SE reduction of DABN applied to FC1's input width, clamped so tiny maps keep a usable bottleneck
and large ones do not blow up the projection width P = 1 + hidden of the fused matching.
``attention=False`` is the "average pooling" baseline of Table 5 (alpha = 1/K).

Projection form (docs/bundle.md): FC1 of the concatenation splits into per-expert, per-half
blocks, so expert i's projections are ``wq_i = [w_l, W1_{i,query}^T]`` and
``wg_i = [w_l, W1_{i,gallery}^T]`` with w_l the MS head's FC weights of scale l (column 0).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tal_plugins import qaconv_responses

from .projection import HeadProjection, ScaleProjection, over_gallery_chunks, projection_scores
from .qaconv import Maps, MSQAConvHead, as_list, match_layout

MIN_HIDDEN, MAX_HIDDEN = 8, 256


def msda_hidden_width(num_domains: int, hw: int, reduction: int = 16) -> int:
    """Attention hidden width of one scale: clamp(K * 2 * HW // r, 8, 256)."""
    return min(MAX_HIDDEN, max(MIN_HIDDEN, num_domains * 2 * hw // reduction))


def _attention(num_domains: int, hw: int, reduction: int) -> nn.Sequential:
    hidden = msda_hidden_width(num_domains, hw, reduction)
    return nn.Sequential(nn.Linear(num_domains * 2 * hw, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_domains))


class MSDAQAConvHead(nn.Module):
    """Maps per scale are [N, K, C, h, w] (all experts on the same images)."""

    def __init__(self, num_domains: int, hw_per_scale: Sequence[int], reduction: int = 16,
                 attention: bool = True):
        super().__init__()
        self.num_domains = num_domains
        self.ms = MSQAConvHead(hw_per_scale)
        self.attention = None
        if attention:
            self.attention = nn.ModuleList(_attention(num_domains, hw, reduction)
                                           for hw in self.ms.hw)

    def _maps(self, maps: Maps) -> list[Tensor]:
        maps = self.ms.check_maps(as_list(maps), stacked=True)
        for x in maps:
            if x.shape[1] != self.num_domains:
                raise ValueError(f"expected {self.num_domains} experts in dim 1, "
                                 f"got {tuple(x.shape)}")
        return maps

    def alphas(self, scale: int, responses: Tensor) -> Tensor:
        """Expert weights [..., K] of scale `scale` from responses [..., K, 2 HW]; rows sum to 1."""
        if self.attention is None:
            return responses.new_full((*responses.shape[:-1],), 1.0 / self.num_domains)
        return torch.softmax(self.attention[scale](responses.flatten(-2)), dim=-1)

    def mixed_responses(self, q_maps: Maps, g_maps: Maps) -> list[Tensor]:
        """Per scale the attention-weighted response vectors [Nq, Ng, 2 HW_l]."""
        out = []
        for l, (q, g) in enumerate(zip(self._maps(q_maps), self._maps(g_maps))):
            q, g = match_layout(q), match_layout(g)
            v = torch.stack([qaconv_responses(q[:, i], g[:, i])
                             for i in range(self.num_domains)], dim=2)  # [Nq, Ng, K, 2HW]
            out.append((self.alphas(l, v).unsqueeze(-1) * v).sum(dim=2))
        return out

    def forward(self, q_maps: Maps, g_maps: Maps) -> Tensor:
        """Scores [Nq, Ng] from full response vectors (training path; eval: gallery chunks)."""
        def run(q: Maps, g: Maps) -> Tensor:
            return self.ms.score_responses(self.mixed_responses(q, g))

        if self.training:
            return run(q_maps, g_maps)
        floats = self.num_domains * 2 * sum(self.ms.hw)
        return over_gallery_chunks(run, as_list(q_maps), as_list(g_maps), floats)

    def projection(self) -> HeadProjection:
        """Eval form: mode 'attention' (wq/wg [K, HW, 1 + H], b1, w2, b2) or 'mean' (avg)."""
        base = self.ms.projection()
        if self.attention is None:
            return base.per_expert_mean(self.num_domains)
        k = self.num_domains
        scales = []
        for s, hw, att in zip(base.scales, self.ms.hw, self.attention):
            fc1, fc2 = att[0], att[2]
            w1 = fc1.weight.view(-1, k, 2, hw)  # FC1 input = cat_i [query half, gallery half]
            wq = torch.cat((s.wq.expand(k, hw, 1), w1[:, :, 0].permute(1, 2, 0)), dim=-1)
            wg = torch.cat((s.wg.expand(k, hw, 1), w1[:, :, 1].permute(1, 2, 0)), dim=-1)
            scales.append(ScaleProjection(wq, wg, fc1.bias, fc2.weight, fc2.bias))
        return HeadProjection("attention", tuple(scales), base.affine)

    def score(self, q_maps: Maps, g_maps: Maps) -> Tensor:
        """Scores [Nq, Ng] in projection form (one matching call per scale and expert)."""
        return projection_scores(self.projection(), [match_layout(q) for q in self._maps(q_maps)],
                                 [match_layout(g) for g in self._maps(g_maps)])
