"""Builds each epoch's batches from the training records and the current model (`samplers`).

`BatchPlanner` knows the identity sets once (every domain, and the hybrid set of all domains),
resolves their batch sizes with the fallbacks of `samplers.usable_batch_ids` (warning once), and
per epoch scores one random image per identity with the model for the graph sampler:

* domain i: expert i's maps scored by the phase-1 head (``ds_head``, eval projection form);
* hybrid set: `TALModel.match` on `TALModel.extract`, i.e. the inference score (DS + DI).

Under DDP the score matrices of rank 0 are broadcast, so every rank builds the same plan.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from tal_infer.errors import DataError

from .data.protocols import TrainRecord
from .evaluation import extract_batches
from .models import TALModel
from .models.tal import eval_mode
from .samplers import EpochPlan, identity_batches, images_by_identity, usable_batch_ids


class BatchPlanner:
    """Identity sets of a training set and the sampler settings; `plan` draws one epoch."""

    def __init__(self, records: Sequence[TrainRecord], domains: Sequence[str],
                 phases: Sequence[str], sampler: str = "gs", batch_ids: int = 16,
                 instances: int = 4):
        if sampler not in ("gs", "pk"):
            raise ValueError(f"sampler must be 'gs' or 'pk', got {sampler!r}")
        self.records, self.sampler, self.instances = list(records), sampler, instances
        self.hybrid_images = images_by_identity([r.label for r in self.records])
        self.domain_images: list[dict[int, list[int]]] = []
        if "per_domain" in phases:
            for d in range(len(domains)):  # p1: one identity may appear in several cameras
                in_domain = {label: [i for i in idx if self.records[i].domain == d]
                             for label, idx in self.hybrid_images.items()}
                self.domain_images.append({k: v for k, v in in_domain.items() if v})
        self.domain_batch_ids = [usable_batch_ids(f"domain '{name}'", len(images), batch_ids)
                                 for name, images in zip(domains, self.domain_images)]
        self.uses_hybrid = "hybrid_ds" in phases or "hybrid_di" in phases
        self.hybrid_batch_ids = (usable_batch_ids("the hybrid training set",
                                                  len(self.hybrid_images), batch_ids)
                                 if self.uses_hybrid else 0)
        if not any(self.domain_batch_ids) and not self.hybrid_batch_ids:
            raise DataError("the training set has no identity set with two identities; "
                            "nothing to train on")

    def plan(self, model: TALModel, rng: np.random.Generator, device: torch.device,
             batch_size: int = 128, share: Callable[[Tensor], Tensor] = lambda t: t,
             sampler: str | None = None) -> EpochPlan:
        """This epoch's batches; `share` makes every rank use the same score matrices.
        ``sampler`` overrides the planner's for this epoch (random PK warm-up epochs)."""
        kind = sampler or self.sampler

        def scores(images: dict[int, list[int]], fn) -> np.ndarray | None:
            if kind != "gs":
                return None
            picks = [self.records[int(rng.choice(idx))] for idx in images.values()]
            return share(fn(picks).float().contiguous()).cpu().numpy()

        domains = []
        for d, (images, batch_ids) in enumerate(zip(self.domain_images, self.domain_batch_ids)):
            s = scores(images, lambda picks, d=d: expert_scores(model, picks, d, device,
                                                                 batch_size)) if batch_ids else None
            domains.append(identity_batches(kind, s, list(images), images, batch_ids,
                                            self.instances, rng))
        hybrid = ()
        if self.hybrid_batch_ids:
            s = scores(self.hybrid_images,
                       lambda picks: inference_scores(model, picks, device, batch_size))
            hybrid = identity_batches(kind, s, list(self.hybrid_images),
                                      self.hybrid_images, self.hybrid_batch_ids, self.instances,
                                      rng)
        return EpochPlan(tuple(domains), hybrid)


@torch.no_grad()
def expert_scores(model: TALModel, records: Sequence[TrainRecord], domain: int,
                  device: torch.device, batch_size: int = 128) -> Tensor:
    """[N, N] phase-1 scores of `records` through expert `domain` (eval statistics)."""
    def maps(images: Tensor) -> dict[str, Tensor]:
        with eval_mode(model):
            return model.feature_maps(images, domain)

    feats = extract_batches(maps, records, model, device, batch_size)
    ordered = [feats[s] for s in model.config.scales]
    return model.ds_head.score(ordered, ordered)


@torch.no_grad()
def inference_scores(model: TALModel, records: Sequence[TrainRecord], device: torch.device,
                     batch_size: int = 128) -> Tensor:
    """[N, N] inference scores (all streams) of `records`."""
    feats = extract_batches(model.extract, records, model, device, batch_size)
    return model.match(feats, feats)
