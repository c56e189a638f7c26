"""Target evaluation during and after training (paper Sec. 4: mAP and CMC top-1/5/10).

Features come from `TALModel.extract` (eval statistics) and scores from `TALModel.match`, the
eval projection form the export reproduces; ranking metrics from `tal_infer.metrics` (Market-1501
protocol: same-id same-camera gallery entries excluded, distractors kept, junk already dropped by
the loaders). Parts (paper Table 3): ``tal`` = the model's inference score (DS + DI), ``ds`` and
``di`` = each stream alone, for the streams the model has.

**Units:** every metric is a percentage rounded to 2 decimals (``mAP``, ``top1``, ``top5``,
``top10``), as re-id tables print them; `tal_infer.metrics` returns fractions, scaled here.

`evaluate_epoch` makes one metrics.json entry: ``{"epoch": e, <target>: {part: metrics},
"diagnostics": {...}}`` (`tal_train.diagnostics`; read the targets with `target_metrics`), plus
each part's per-query AP and top-1 hit (``per_query.json``: what confidence intervals over
queries are bootstrapped from, `per_query_metrics`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from tal_infer.console import progress
from tal_infer.errors import DataError
from tal_infer.metrics import evaluate_scores

from .data.records import Dataset, ImageRecord
from .data.transforms import EvalImages
from .diagnostics import AttentionRecorder, expert_divergence, msda_attention, stream_agreement
from .models import TALModel

TOPK = (1, 5, 10)
RESERVED_KEYS = ("epoch", "images_per_s", "diagnostics")  # metrics entry keys that are not targets


def extract_batches(fn: Callable[[Tensor], dict[str, Tensor]], records: Sequence,
                    model: TALModel, device: torch.device, batch_size: int = 128,
                    workers: int = 0, desc: str | None = None) -> dict[str, Tensor]:
    """fn(images) over `records` in batches (preprocessed as `model.config` says), concatenated
    on `device`. A progress bar is shown when `desc` is given."""
    c = model.config
    loader = torch.utils.data.DataLoader(EvalImages(records, c.image_size, c.mean, c.std),
                                         batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for images, _ in progress(loader, desc=desc or "", unit="batch",
                                  enabled=desc is not None, leave=False):
            for name, value in fn(images.to(device)).items():
                parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def _columns(records: Sequence[ImageRecord], field: str) -> np.ndarray:
    return np.array([getattr(r, field) for r in records])


def rank_metrics(scores: Tensor, query: Sequence[ImageRecord],
                 gallery: Sequence[ImageRecord]) -> dict[str, float]:
    """mAP and top-1/5/10 in percent (2 decimals) of a [Nq, Ng] score matrix."""
    m = evaluate_scores(scores.float().cpu().numpy(), _columns(query, "pid"),
                        _columns(gallery, "pid"), _columns(query, "camid"),
                        _columns(gallery, "camid"), max_rank=max(TOPK))
    out = {"mAP": m["mAP"]} | {f"top{k}": float(m["cmc"][k - 1]) for k in TOPK}
    return {k: round(100.0 * v, 2) for k, v in out.items()}


def per_query_metrics(scores: Tensor, query: Sequence[ImageRecord],
                      gallery: Sequence[ImageRecord]) -> dict[str, list]:
    """Per valid query (one with a match in another camera): AP and top-1 hit as fractions,
    with the query's index. Their means are `rank_metrics`' mAP and top-1 (same protocol:
    each row is scored by `tal_infer.metrics` alone)."""
    s = scores.float().cpu().numpy()
    g_pids, g_cams = _columns(gallery, "pid"), _columns(gallery, "camid")
    out: dict[str, list] = {"query": [], "ap": [], "top1": []}
    for i, q in enumerate(query):
        try:
            m = evaluate_scores(s[i:i + 1], np.array([q.pid]), g_pids, np.array([q.camid]),
                                g_cams, max_rank=1)
        except DataError:  # no match in another camera: not a valid query
            continue
        out["query"].append(i)
        out["ap"].append(round(m["mAP"], 6))
        out["top1"].append(int(m["cmc"][0]))
    return out


@dataclass
class TargetResult:
    """One target's evaluation: metrics and score matrix per part, and its diagnostics."""
    metrics: dict[str, dict[str, float]]
    scores: dict[str, Tensor]
    diagnostics: dict[str, Any]


def score_target(model: TALModel, dataset: Dataset, device: torch.device,
                 batch_size: int = 128, workers: int = 0, progress: bool = False) -> TargetResult:
    """Scores, metrics ({"tal", "ds", "di"}, the model's streams) and diagnostics of a target."""
    records = list(dataset.query) + list(dataset.gallery)
    with AttentionRecorder(model) as recorder:
        feats = extract_batches(model.extract, records, model, device, batch_size, workers,
                                desc=f"extract {dataset.name}" if progress else None)
    nq = len(dataset.query)
    query = {k: v[:nq] for k, v in feats.items()}
    gallery = {k: v[nq:] for k, v in feats.items()}
    streams = model.config.streams
    scores = {"tal": model.match(query, gallery)}
    if len(streams) > 1:
        scores.update({part: model.match(query, gallery, parts=(part,)) for part in streams})
    metrics = {part: rank_metrics(s, dataset.query, dataset.gallery) for part, s in scores.items()}
    metrics.update({part: dict(metrics["tal"]) for part in streams if part not in metrics})
    diagnostics: dict[str, Any] = {}
    if recorder.weights:
        diagnostics["dabn_attention"] = recorder.summary()
    if msda := msda_attention(model, query, gallery):
        diagnostics["msda_attention"] = msda
    if "ds" in scores and "di" in scores:
        diagnostics.update(stream_agreement(scores["ds"], scores["di"]))
    return TargetResult(metrics, scores, diagnostics)


def evaluate_target(model: TALModel, dataset: Dataset, device: torch.device,
                    batch_size: int = 128, workers: int = 0,
                    progress: bool = False) -> dict[str, dict[str, float]]:
    """{"tal": metrics, "ds": ..., "di": ...} of one target (only the model's streams)."""
    return score_target(model, dataset, device, batch_size, workers, progress).metrics


def evaluate_epoch(model: TALModel, targets: Mapping[str, Dataset], epoch: int,
                   device: torch.device, batch_size: int = 128, workers: int = 0,
                   progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json entry with diagnostics, per_query.json content: ``{"epoch": e,
    "targets": {target: {part: per_query_metrics}}}``)."""
    entry: dict[str, Any] = {"epoch": epoch}
    diagnostics: dict[str, Any] = expert_divergence(model)
    per_query: dict[str, Any] = {}
    for name, dataset in targets.items():
        result = score_target(model, dataset, device, batch_size, workers, progress)
        entry[name] = result.metrics
        diagnostics[name] = result.diagnostics
        per_query[name] = {part: per_query_metrics(s, dataset.query, dataset.gallery)
                           for part, s in result.scores.items()}
    entry["diagnostics"] = diagnostics
    return entry, {"epoch": epoch, "targets": per_query}


def target_metrics(entry: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {part: metrics}} of a metrics.json entry (its other keys left out)."""
    return {k: v for k, v in entry.items() if k not in RESERVED_KEYS}


def format_metrics_table(entry: dict) -> str:
    """A markdown table of one metrics entry: target x part, mAP and top-k."""
    lines = [f"| target | part | mAP | {' | '.join(f'top-{k}' for k in TOPK)} |",
             "|---|---|---:|" + "---:|" * len(TOPK)]
    for target, parts in target_metrics(entry).items():
        for part, m in parts.items():
            cells = [f"{m['mAP']:.2f}"] + [f"{m[f'top{k}']:.2f}" for k in TOPK]
            lines.append(f"| {target} | {part} | {' | '.join(cells)} |")
    return "\n".join(lines)
