"""Diagnostics of every evaluation: do the two streams learn different things?

Recorded under ``"diagnostics"`` in each metrics.json entry (docs/training.md, "Diagnostics").
They answer why DS + DI may score no better than one stream (issue 16: on the first synthetic
benchmark DS and DI scores correlated 0.991 and DABN's attention was nearly uniform):

* ``expert_divergence`` {stage: r}: per DomainNorm, the standard deviation of the K experts'
  running means (per channel) divided by the within-domain standard deviation (the experts'
  mean sqrt(running_var)), averaged over channels and over the layers of the stage (``stem``,
  ``res2`` .. ``res5``, ``neck_res4`` / ``neck_res5``). Near 0: the experts have learned the
  same statistics, so DSBN cannot tell domains apart. Needs K >= 2 trained experts.
* ``di_offset`` {stage: r} (``dabn_stats`` "own" only): the distance of the DI stream's own
  running mean from the experts' average mean, in the same within-domain units.
* per target, on its query and gallery images:

  - ``dabn_attention`` {stage: {"entropy", "spread"}}: entropy of DABN's mixing weights a(x)
    divided by log K (1.0 = uniform), mean over images; spread = std of a_i over images, mean
    over i (0 = the same mix for every input);
  - ``msda_attention`` {scale: {"entropy", "spread"}}: the same for MSDA-QAConv's expert
    weights over query-gallery pairs (the first `MSDA_QUERIES` x `MSDA_GALLERY` pairs);
  - ``ds_di_correlation``: Pearson correlation of the DS and DI scores over all pairs, and
    ``ds_di_top1_agreement``: the fraction of queries whose top-1 gallery entry is the same for
    both streams (two streams that rank alike cannot add up to a better ranking).

Each stream's mAP sits beside them in the entry's per-target metrics (``ds``, ``di``).
`AttentionRecorder` captures DABN's weights with forward hooks during the evaluation's own
feature extraction, so the per-image part costs no extra forward pass.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from tal_plugins import qaconv_responses

from .models import DABN, DomainNorm, TALModel
from .models.qaconv import match_layout

MSDA_QUERIES, MSDA_GALLERY = 64, 128
_LAYER = re.compile(r"layer(\d+)$")


def stage_of(name: str) -> str:
    """Stage of a module name: ``backbone.layer3.1.bn2`` -> ``res4``, ``necks.res5.bn`` ->
    ``neck_res5``, other backbone norms -> ``stem``."""
    parts = name.split(".")
    if parts[0] == "necks":
        return f"neck_{parts[1]}"
    m = _LAYER.match(parts[1]) if len(parts) > 1 else None
    return f"res{int(m.group(1)) + 1}" if m else "stem"


def _stage_means(values: dict[str, list[float]]) -> dict[str, float]:
    return {stage: round(sum(v) / len(v), 5) for stage, v in values.items()}


@torch.no_grad()
def expert_divergence(model: TALModel) -> dict[str, dict[str, float]]:
    """``{"expert_divergence": {stage: r}}`` (+ ``di_offset`` for own DABN statistics); empty
    with fewer than two experts or when the experts are not trained (no per-domain phase)."""
    spread, offset = defaultdict(list), defaultdict(list)
    if "per_domain" not in model.training_phases():
        return {}
    for name, norm in model.named_modules():
        if not isinstance(norm, DomainNorm) or norm.num_domains < 2:
            continue
        means = torch.stack([bn.running_mean for bn in norm.experts]).double()   # [K, C]
        within = torch.stack([bn.running_var for bn in norm.experts]).double().sqrt().mean(0)
        within = within.clamp_min(1e-12)
        spread[stage_of(name)].append(float((means.std(0, unbiased=False) / within).mean()))
        if isinstance(getattr(norm, "di", None), DABN) and norm.di.stats == "own":
            gap = (norm.di.running_mean.double() - means.mean(0)).abs() / within
            offset[stage_of(name)].append(float(gap.mean()))
    out: dict[str, dict[str, float]] = {}
    if spread:
        out["expert_divergence"] = _stage_means(spread)
    if offset:
        out["di_offset"] = _stage_means(offset)
    return out


def weight_statistics(weights: Tensor) -> dict[str, float]:
    """{"entropy": mean normalized entropy, "spread": mean over experts of the std over rows}
    of mixing weights [N, K] whose rows sum to 1."""
    w = weights.double().clamp_min(1e-12)
    k = w.shape[1]
    entropy = -(w * w.log()).sum(1) / math.log(k)
    return {"entropy": round(float(entropy.mean()), 5),
            "spread": round(float(weights.double().std(0, unbiased=False).mean()), 5)}


class AttentionRecorder:
    """Collects the DABN mixing weights of every layer while the model runs (context manager)."""

    def __init__(self, model: nn.Module):
        self.weights: dict[str, list[Tensor]] = defaultdict(list)  # layer name -> [N, K] chunks
        self._handles = [m.attention.register_forward_hook(self._hook(name))
                         for name, m in model.named_modules()
                         if isinstance(m, DABN) and m.attention is not None]

    def _hook(self, layer: str):
        def record(module: nn.Module, inputs: Any, logits: Tensor) -> None:
            self.weights[layer].append(torch.softmax(logits.detach().float(), dim=1).cpu())
        return record

    def __enter__(self) -> "AttentionRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {"entropy", "spread"}}, each the mean over the stage's layers."""
        per_stage: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for layer, chunks in self.weights.items():
            for key, value in weight_statistics(torch.cat(chunks)).items():
                per_stage[stage_of(layer)][key].append(value)
        return {stage: _stage_means(stats) for stage, stats in per_stage.items()}


@torch.no_grad()
def msda_attention(model: TALModel, query: dict[str, Tensor],
                   gallery: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """{scale: {"entropy", "spread"}} of MSDA-QAConv's expert weights on the first
    MSDA_QUERIES x MSDA_GALLERY query-gallery pairs; empty without an MSDA attention."""
    head = model.msda_head
    if head is None or head.attention is None:
        return {}
    out = {}
    for l, scale in enumerate(model.config.scales):
        q = match_layout(query[f"ds_{scale}"][:MSDA_QUERIES])
        g = match_layout(gallery[f"ds_{scale}"][:MSDA_GALLERY])
        v = torch.stack([qaconv_responses(q[:, i], g[:, i]) for i in range(head.num_domains)],
                        dim=2)  # [nq, ng, K, 2 HW]
        out[scale] = weight_statistics(head.alphas(l, v).flatten(0, 1))
    return out


def stream_agreement(ds: Tensor, di: Tensor) -> dict[str, float]:
    """Pearson correlation of two [Nq, Ng] score matrices and their top-1 agreement."""
    a, b = ds.double().flatten(), di.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    corr = float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))
    same_top1 = (ds.argmax(1) == di.argmax(1)).double().mean()
    return {"ds_di_correlation": round(corr, 5), "ds_di_top1_agreement": round(float(same_top1), 5)}
