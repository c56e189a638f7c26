"""Triplet losses on similarity scores (paper eq. 9; QAConv-GS ``TripletLoss``).

QAConv heads output a similarity score per pair (a logit; higher = more alike), so the hardest
positive of an anchor is its *lowest*-scoring same-identity sample (itself excluded) and the
hardest negative its *highest*-scoring other-identity sample:
``loss_i = [m - S_i,p_hard + S_i,n_hard]_+``, averaged over anchors (`batch_hard_triplet`, the
paper's loss). QAConv-GS uses m = 16 on its logit scale. Anchors without a positive or without a
negative in the batch are left out.

`batch_all_triplet` averages the hinge over every (anchor, positive, negative) triple instead.
Why it exists: the heads end in a batch-statistics BN (``logit_bn``), so the loss is linear in
that BN's scale w, and its gradient on w is the mean of ``S_n,hard - S_p,hard`` in normalized
units. From a randomly initialized backbone the hardest of many negatives nearly always beats
the hardest of a few positives, so batch-hard drives w (and the FC) to 0: every score equal,
loss = m, training stops (measured on the synthetic domains: loss 16.0 within ~20 iterations
at lr 0.005-0.05). Averaged over all triples the gap is about 0 at random init, so there is no
collapse and the backbone learns; `tal-train` uses it while the backbone is not pretrained
(``--mining``, docs/training.md). With ImageNet weights (the paper's setting) batch-hard is used.

`pairwise_matching_loss` is QAConv-GS v2.0's ``PairwiseMatchingLoss`` (``--loss pairwise``, the
``qaconv-gs`` recipe): every score of the [B, B] matrix is a logit of "same identity", trained
with binary cross-entropy against the pair labels, self-pairs included as the official code has
them, summed over each row and averaged over the rows. No mining, so no collapse at random init.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MARGIN = 16.0


class LossResult(NamedTuple):
    loss: Tensor        # scalar, differentiable
    accuracy: float     # fraction of anchors (triples) whose positive outscores the negative


def _pair_masks(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(same identity [B, B], positive = same identity, not itself [B, B]) after shape checks."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] != labels.numel():
        raise ValueError(f"scores {tuple(scores.shape)} must be [B, B] for {labels.numel()} "
                         "labels")
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if not (positive.any(dim=1) & (~same).any(dim=1)).any():
        raise ValueError("a triplet batch needs an identity with two images and a second identity")
    return same, positive


def _hardest(scores: Tensor, same: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor with a positive and a negative: (lowest positive, highest negative) score."""
    valid = positive.any(dim=1) & (~same).any(dim=1)
    inf = torch.finfo(scores.dtype).max
    return (scores.masked_fill(~positive, inf).min(dim=1).values[valid],
            scores.masked_fill(same, -inf).max(dim=1).values[valid])


def batch_hard_triplet(scores: Tensor, labels: Tensor,
                       margin: float = DEFAULT_MARGIN) -> LossResult:
    """Loss of a [B, B] score matrix whose rows and columns are the batch samples `labels` [B]."""
    same, positive = _pair_masks(scores, labels)
    hardest_pos, hardest_neg = _hardest(scores.float(), same, positive)
    loss = (margin - hardest_pos + hardest_neg).clamp(min=0).mean()
    accuracy = (hardest_pos > hardest_neg).float().mean().item()
    return LossResult(loss, accuracy)


def batch_all_triplet(scores: Tensor, labels: Tensor,
                      margin: float = DEFAULT_MARGIN) -> LossResult:
    """Mean hinge over every valid (anchor, positive, negative) triple of the batch."""
    same, positive = _pair_masks(scores, labels)
    scores = scores.float()
    triples = positive[:, :, None] & ~same[:, None, :]  # [anchor, positive, negative]
    gaps = (scores[:, None, :] - scores[:, :, None])[triples]  # S_an - S_ap
    loss = (margin + gaps).clamp(min=0).mean()
    return LossResult(loss, (gaps < 0).float().mean().item())


def pairwise_matching_loss(scores: Tensor, labels: Tensor) -> LossResult:
    """BCE of every pair's logit against "same identity", summed per row, mean over rows;
    accuracy = anchors whose hardest positive (not itself) outscores the hardest negative."""
    same, positive = _pair_masks(scores, labels)
    scores = scores.float()
    loss = F.binary_cross_entropy_with_logits(scores, same.float(), reduction="none").sum(1)
    with torch.no_grad():
        hardest_pos, hardest_neg = _hardest(scores, same, positive)
    return LossResult(loss.mean(), (hardest_pos > hardest_neg).float().mean().item())


TRIPLET_LOSSES = {"hard": batch_hard_triplet, "all": batch_all_triplet}
LOSSES = ("triplet", "pairwise")


def score_loss(kind: str, mining: str, scores: Tensor, labels: Tensor,
               margin: float = DEFAULT_MARGIN) -> LossResult:
    """The training loss of a [B, B] score matrix: ``triplet`` with `mining`, or ``pairwise``."""
    if kind == "pairwise":
        return pairwise_matching_loss(scores, labels)
    if kind != "triplet":
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    return TRIPLET_LOSSES[mining](scores, labels, margin)
