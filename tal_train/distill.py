"""Distilling the global descriptor from a trained TAL model (`tal-distill`; docs/scale.md).

The descriptor head (`tal_train.models.descriptor`) learns to rank crops as the TAL inference
score ranks them. The TAL model is frozen (eval mode, no gradients): it gives the maps the head
reads and the teacher scores, so its own accuracy cannot change. Unlabelled crops are enough:
the training images, or any crops like those the cameras produce.

Loop: per block, ``block_size`` random crops are extracted once and scored all-against-all with
``TALModel.match`` (the teacher, exactly the score the runtime computes); then
``steps_per_block`` steps on random batches of the block minimize, per anchor crop, the KL
divergence between the teacher's softmax over the other crops (temperature
``teacher_temperature``, on the score's own logit scale) and the student's softmax over cosine
similarities (temperature ``student_temperature``): a listwise loss that weighs the top of each
ranking most, which is what stage 1 must get right. One further block, never trained on, is
held out: the report gives the fraction of each crop's teacher top-10 found among its top
``holdout_shortlist`` by descriptor (the recall two-stage retrieval needs).

The result is stored in the checkpoint under ``descriptor`` (head spec, weights, report), which
`tal-export` turns into the extractor's ``descriptor`` output. A run resumed from the checkpoint
writes it without the key (the head would no longer match the model).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tal_infer import console
from tal_infer.atomic import atomic_file
from tal_infer.errors import TalError

from .checkpoint import load_checkpoint
from .data.records import ImageRecord
from .evaluation import extract_batches
from .models import TALModel
from .models.descriptor import DescriptorHead

MIN_IMAGES = 32


@dataclass(frozen=True)
class DistillOptions:
    """Head size and the schedule (defaults: 2-4 minutes for the tiny preset and ~6,000 crops on
    the shared 2-core CPU)."""
    dim: int = 256
    reduced: int = 16
    hidden: int = 1024
    blocks: int = 8
    block_size: int = 480
    steps_per_block: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    teacher_temperature: float = 4.0
    student_temperature: float = 0.05
    holdout_shortlist: int = 20
    seed: int = 0

    def check(self, num_images: int) -> None:
        if num_images < MIN_IMAGES:  # half of them at most are held out
            raise TalError(f"distillation needs at least {MIN_IMAGES} crops, found {num_images}")
        for name in ("dim", "reduced", "hidden", "blocks", "block_size", "steps_per_block",
                     "batch_size", "holdout_shortlist"):
            if getattr(self, name) < 1:
                raise TalError(f"distillation option {name} must be >= 1")


def distill_descriptor(model: TALModel, paths: Sequence[str | os.PathLike],
                       options: DistillOptions = DistillOptions(),
                       device: torch.device | str = "cpu",
                       progress: bool = False) -> tuple[DescriptorHead, dict[str, Any]]:
    """Train a descriptor head for the frozen ``model`` on the crops ``paths``; returns the
    head (eval mode, CPU) and a plain report (options, loss, held-out recall)."""
    options.check(len(paths))
    device = torch.device(device)
    model = model.eval().to(device)
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    order = rng.permutation(len(paths))
    block = min(options.block_size, len(paths) // 2)
    holdout, pool = order[:block], order[block:]
    batch = min(options.batch_size, block)
    head = DescriptorHead(_item_shapes(model), options.dim, options.reduced,
                          options.hidden).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=options.lr)
    total = options.blocks * options.steps_per_block
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    losses = []
    with console.progress(total=total, desc="distilling descriptor", unit="step",
                          enabled=progress) as bar:
        for _ in range(options.blocks):
            chosen = rng.choice(pool, min(block, len(pool)), replace=False)
            maps, teacher = _teacher_block(model, [paths[i] for i in chosen], device)
            for _ in range(options.steps_per_block):
                sel = torch.as_tensor(rng.choice(len(chosen), batch, replace=False),
                                      device=device)
                loss = _listwise_kl(head({k: v[sel] for k, v in maps.items()}),
                                    teacher[sel][:, sel], options)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update()
    head.eval()
    maps, teacher = _teacher_block(model, [paths[i] for i in holdout], device)
    with torch.no_grad():
        recall = shortlist_recall(head(maps), teacher, options.holdout_shortlist)
    report = {"options": asdict(options), "images": len(paths), "holdout_images": len(holdout),
              "final_loss": float(np.mean(losses[-options.steps_per_block:])),
              "holdout_recall": {"top": 10, "shortlist": options.holdout_shortlist,
                                 "recall": round(recall, 4)}}
    return head.cpu(), report


def shortlist_recall(descriptors: torch.Tensor, scores: torch.Tensor, shortlist: int,
                     top: int = 10) -> float:
    """Mean fraction of each row's ``top`` best by ``scores`` that are among its ``shortlist``
    best by descriptor inner product (each item's own column left out)."""
    n = len(scores)
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    sim = (descriptors @ descriptors.T).masked_fill(eye, -math.inf)
    best = scores.masked_fill(eye, -math.inf).topk(min(top, n - 1), dim=1).indices
    listed = sim.topk(min(shortlist, n - 1), dim=1).indices
    hits = (best[:, :, None] == listed[:, None, :]).any(dim=2)
    return float(hits.float().mean())


def add_descriptor(checkpoint: str | os.PathLike, head: DescriptorHead, report: dict[str, Any],
                   out: str | os.PathLike | None = None) -> Path:
    """Write the checkpoint (to ``out``, default in place, atomically) with the head under
    ``descriptor``; everything else is kept as it was."""
    ckpt = load_checkpoint(checkpoint)
    ckpt["descriptor"] = {**head.spec(), "state": head.state_dict(), "distillation": report}
    target = Path(out if out is not None else checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as f:
        torch.save(ckpt, f)
    return target


def load_descriptor(ckpt: dict[str, Any], model: TALModel) -> DescriptorHead | None:
    """The distilled head stored in a loaded checkpoint (None without one); `TalError` when it
    does not fit the model's maps."""
    entry = ckpt.get("descriptor")
    if entry is None:
        return None
    try:
        head = DescriptorHead.from_spec(entry)
        if head.inputs != _item_shapes(model):
            raise ValueError(f"it reads maps {head.inputs}, the model gives {_item_shapes(model)}")
        head.load_state_dict(entry["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise TalError(f"the checkpoint's descriptor head is unusable ({str(err)[:200]}); "
                       "distill it again with tal-distill") from None
    return head.eval()


def _item_shapes(model: TALModel) -> dict[str, tuple[int, ...]]:
    """Per-item shapes of the extractor outputs, as ``TALModel.extract`` gives them."""
    cfg = model.config
    return {name: (*([cfg.num_domains] if name.startswith("ds_") else []), cfg.neck_channels,
                   h, w) for name, (h, w) in model.feature_shapes().items()}


def _teacher_block(model: TALModel, paths: list[str], device: torch.device
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Eval maps of ``paths`` and their all-against-all TAL scores."""
    records = [ImageRecord(str(p), 0, 0, "") for p in paths]
    maps = extract_batches(model.extract, records, model, device, batch_size=64)
    return maps, model.match(maps, maps).float()


def _listwise_kl(descriptors: torch.Tensor, teacher: torch.Tensor,
                 options: DistillOptions) -> torch.Tensor:
    """KL(teacher || student) of each row's softmax over the other items."""
    eye = torch.eye(len(teacher), dtype=torch.bool, device=teacher.device)
    student = (descriptors @ descriptors.T / options.student_temperature).masked_fill(eye, -1e9)
    target = (teacher / options.teacher_temperature).masked_fill(eye, -1e9)
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(target, dim=1),
                    log_target=True, reduction="batchmean")
