"""Target evaluation during and after training (paper Sec. 4: mAP and CMC top-1/5/10).

Features come from `TALModel.extract` (eval statistics) and scores from `TALModel.match`, the
eval projection form the export reproduces; ranking metrics from `tal_infer.metrics` (Market-1501
protocol: same-id same-camera gallery entries excluded, distractors kept, junk already dropped by
the loaders). Parts (paper Table 3): ``tal`` = the model's inference score (DS + DI), ``ds`` and
``di`` = each stream alone, for the streams the model has.

**Units:** every metric is a percentage rounded to 2 decimals (``mAP``, ``top1``, ``top5``,
``top10``), as re-id tables print them; `tal_infer.metrics` returns fractions, scaled here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tal_infer.metrics import evaluate_scores

from .data.records import Dataset, ImageRecord
from .data.transforms import EvalImages
from .models import TALModel

TOPK = (1, 5, 10)
# Keys of a metrics.json entry that are not target names.
ENTRY_FIELDS = ("epoch", "images_per_s")


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
        for images, _ in tqdm(loader, desc=desc, unit="batch", disable=desc is None,
                              leave=False):
            for name, value in fn(images.to(device)).items():
                parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def rank_metrics(scores: Tensor, query: Sequence[ImageRecord],
                 gallery: Sequence[ImageRecord]) -> dict[str, float]:
    """mAP and top-1/5/10 in percent (2 decimals) of a [Nq, Ng] score matrix."""
    def column(records, field):
        return np.array([getattr(r, field) for r in records])

    m = evaluate_scores(scores.float().cpu().numpy(), column(query, "pid"),
                        column(gallery, "pid"), column(query, "camid"),
                        column(gallery, "camid"), max_rank=max(TOPK))
    out = {"mAP": m["mAP"]} | {f"top{k}": float(m["cmc"][k - 1]) for k in TOPK}
    return {k: round(100.0 * v, 2) for k, v in out.items()}


def evaluate_target(model: TALModel, dataset: Dataset, device: torch.device,
                    batch_size: int = 128, workers: int = 0,
                    progress: bool = False) -> dict[str, dict[str, float]]:
    """{"tal": metrics, "ds": ..., "di": ...} of one target (only the model's streams)."""
    records = list(dataset.query) + list(dataset.gallery)
    feats = extract_batches(model.extract, records, model, device, batch_size, workers,
                            desc=f"extract {dataset.name}" if progress else None)
    nq = len(dataset.query)
    query = {k: v[:nq] for k, v in feats.items()}
    gallery = {k: v[nq:] for k, v in feats.items()}
    streams = model.config.streams
    out = {"tal": rank_metrics(model.match(query, gallery), dataset.query, dataset.gallery)}
    for part in streams:
        out[part] = (dict(out["tal"]) if len(streams) == 1 else
                     rank_metrics(model.match(query, gallery, parts=(part,)), dataset.query,
                                  dataset.gallery))
    return out


def target_metrics(entry: dict) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {part: metrics}} of one metrics.json entry."""
    return {k: v for k, v in entry.items() if k not in ENTRY_FIELDS}


def format_metrics_table(entry: dict) -> str:
    """A markdown table of one metrics entry: target x part, mAP and top-k."""
    lines = [f"| target | part | mAP | {' | '.join(f'top-{k}' for k in TOPK)} |",
             "|---|---|---:|" + "---:|" * len(TOPK)]
    for target, parts in target_metrics(entry).items():
        for part, m in parts.items():
            cells = [f"{m['mAP']:.2f}"] + [f"{m[f'top{k}']:.2f}" for k in TOPK]
            lines.append(f"| {target} | {part} | {' | '.join(cells)} |")
    return "\n".join(lines)
