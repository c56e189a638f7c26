"""Batch samplers: the graph sampler of QAConv-GS and a PK random sampler (paper Sec. 4.1).

**Graph sampler** (Liao & Shao, "Graph sampling based deep metric learning", CVPR 2022): at the
start of every epoch one random image per identity is scored against all the others with the
current model (eval mode), and each identity forms one batch with its ``batch_ids - 1``
highest-scoring (nearest) other identities, ``instances`` images each (QAConv-GS: 16 x 4 = 64).
Identities close to each other in the model's eyes meet in a batch, so the batch-hard triplet
sees hard negatives; an epoch has one batch per identity.

Which scores (our choice for TAL): phase 1 batches of domain i are built from the scores of
expert i with the phase-1 head (``ds_head``) over the identities of domain i; the hybrid batches
of phases 2-3 from the model's inference score (DS + DI, `TALModel.match`) over all identities.

Fallbacks: a set with fewer identities than ``batch_ids`` gets batches of all its identities
(with a warning); one with a single identity cannot form a triplet and is skipped (warning).
``pk_batches`` (random identities, P x K) serves as the plain alternative (``--sampler pk``).
Images of an identity are drawn without replacement when it has ``instances`` or more, else all
of them plus random repeats (as QAConv-GS).

Everything here is deterministic given the numpy Generator, so every DDP rank builds the same
epoch plan from the same seed and then takes its own share (`EpochPlan.iterations`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def images_by_identity(labels: Sequence[int]) -> dict[int, list[int]]:
    """label -> indices of its records, labels in sorted order."""
    out: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(int(label), []).append(i)
    return dict(sorted(out.items()))


def draw_images(pool: Sequence[int], instances: int, rng: np.random.Generator) -> list[int]:
    """`instances` indices from `pool`: without replacement if it is large enough, else all of
    it plus random repeats."""
    pool = np.asarray(pool)
    if len(pool) >= instances:
        return rng.choice(pool, instances, replace=False).tolist()
    extra = rng.choice(pool, instances - len(pool), replace=True)
    return rng.permutation(np.concatenate([pool, extra])).tolist()


def usable_batch_ids(name: str, num_ids: int, batch_ids: int) -> int:
    """Identities per batch for a set of `num_ids` identities (0 = cannot train), with warnings."""
    if num_ids < 2:
        log.warning("%s has %d identity; a triplet batch needs two, so it is skipped", name,
                    num_ids)
        return 0
    if num_ids < batch_ids:
        log.warning("%s has only %d identities; its batches hold %d identities instead of %d",
                    name, num_ids, num_ids, batch_ids)
        return num_ids
    return batch_ids


def nearest_identity_batches(scores: np.ndarray, ids: Sequence[int],
                             images: dict[int, list[int]], batch_ids: int, instances: int,
                             rng: np.random.Generator) -> list[list[int]]:
    """One batch per identity: it and its ``batch_ids - 1`` highest-scoring other identities.

    `scores` [N, N] between the identities `ids` (higher = more alike). Batch order is shuffled;
    inside a batch the anchor identity comes first, then its neighbours nearest first.
    """
    scores = np.array(scores, dtype=np.float64)
    n = len(ids)
    if scores.shape != (n, n):
        raise ValueError(f"scores {scores.shape} do not match {n} identities")
    np.fill_diagonal(scores, -np.inf)
    k = min(batch_ids, n) - 1
    # stable sort of -scores: ties broken by identity order, so the plan is reproducible
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    batches = []
    for anchor in range(n):
        members = [anchor, *nearest[anchor].tolist()]
        batches.append([i for m in members for i in draw_images(images[ids[m]], instances, rng)])
    return [batches[i] for i in rng.permutation(n)]


def pk_batches(ids: Sequence[int], images: dict[int, list[int]], batch_ids: int,
               instances: int, rng: np.random.Generator) -> list[list[int]]:
    """Random identities in groups of `batch_ids` (the last group topped up from the others),
    `instances` images each; every identity appears once per epoch."""
    order = rng.permutation(len(ids)).tolist()
    batch_ids = min(batch_ids, len(ids))
    groups = [order[i:i + batch_ids] for i in range(0, len(order), batch_ids)]
    if len(groups[-1]) < batch_ids:
        rest = [i for i in order if i not in groups[-1]]
        groups[-1] += rng.choice(rest, batch_ids - len(groups[-1]), replace=False).tolist()
    return [[i for m in g for i in draw_images(images[ids[m]], instances, rng)] for g in groups]


@dataclass(frozen=True)
class Iteration:
    """The batches of one training iteration: per-domain (domain, indices) and the hybrid one."""
    per_domain: tuple[tuple[int, tuple[int, ...]], ...]
    hybrid: tuple[int, ...] | None

    def indices(self) -> list[int]:
        """All record indices of the iteration, per-domain batches first, then the hybrid one."""
        out = [i for _, b in self.per_domain for i in b]
        return out + list(self.hybrid or ())

    def sizes(self) -> list[int]:
        return [len(b) for _, b in self.per_domain] + ([len(self.hybrid)] if self.hybrid else [])


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches: per domain (empty list = domain skipped) and over the hybrid set."""
    domain_batches: tuple[tuple[tuple[int, ...], ...], ...]
    hybrid_batches: tuple[tuple[int, ...], ...]

    def default_iterations(self, world_size: int = 1) -> int:
        """One pass over the identities: the hybrid batches (or the longest domain list) per
        rank."""
        longest = max([len(self.hybrid_batches), *(len(b) for b in self.domain_batches)])
        return max(1, longest // world_size)

    def iterations(self, count: int, rank: int = 0, world_size: int = 1) -> list[Iteration]:
        """`count` iterations of rank `rank`: the global sequence cycles through every batch
        list, and rank r takes iterations r, r + W, r + 2W, ..."""
        out = []
        for step in range(rank, count * world_size, world_size):
            per_domain = tuple((d, batches[step % len(batches)])
                               for d, batches in enumerate(self.domain_batches) if batches)
            hybrid = (self.hybrid_batches[step % len(self.hybrid_batches)]
                      if self.hybrid_batches else None)
            out.append(Iteration(per_domain, hybrid))
        return out


def identity_batches(kind: str, scores: np.ndarray | None, ids: Sequence[int],
                     images: dict[int, list[int]], batch_ids: int, instances: int,
                     rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """The batches of one identity set with sampler `kind` ("gs" needs `scores`, "pk" not);
    `batch_ids` as `usable_batch_ids` gives it (0: no batches)."""
    if batch_ids == 0:
        return ()
    if kind == "gs":
        batches = nearest_identity_batches(scores, ids, images, batch_ids, instances, rng)
    elif kind == "pk":
        batches = pk_batches(ids, images, batch_ids, instances, rng)
    else:
        raise ValueError(f"sampler must be 'gs' or 'pk', got {kind!r}")
    return tuple(tuple(b) for b in batches)
