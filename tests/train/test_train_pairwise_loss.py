"""QAConv-GS v2.0's pairwise matching loss (``--loss pairwise``) against a plain per-pair
reference, and the loss switch of `score_loss`."""
from __future__ import annotations

import math

import pytest
import torch

from tal_train.losses import (batch_all_triplet, batch_hard_triplet, pairwise_matching_loss,
                              score_loss)


def _reference(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary cross-entropy of sigmoid(score) vs same identity, every pair (self-pairs too),
    summed over each row, averaged over the rows, one pair at a time."""
    rows = []
    for i in range(len(labels)):
        total = 0.0
        for j in range(len(labels)):
            p = 1 / (1 + math.exp(-float(scores[i, j])))
            y = float(labels[i] == labels[j])
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
        rows.append(total)
    return sum(rows) / len(rows)


def test_pairwise_loss_equals_the_per_pair_reference_on_random_scores():
    g = torch.Generator().manual_seed(int(torch.randint(0, 1 << 30, ())))
    for _ in range(3):
        labels = torch.randint(0, 4, (10,), generator=g)
        labels[:2] = torch.tensor([0, 0])
        labels[2] = 1  # at least one valid anchor
        scores = torch.randn(10, 10, generator=g) * 3
        result = pairwise_matching_loss(scores, labels)
        assert result.loss.item() == pytest.approx(_reference(scores, labels), rel=1e-5)
        assert 0.0 <= result.accuracy <= 1.0


def test_pairwise_loss_prefers_separated_scores_and_has_gradients():
    labels = torch.tensor([0, 0, 1, 1])
    same = labels[:, None] == labels[None, :]
    good = torch.where(same, 8.0, -8.0)
    bad = -good
    assert pairwise_matching_loss(good, labels).loss < 0.01 < pairwise_matching_loss(bad, labels).loss
    assert pairwise_matching_loss(good, labels).accuracy == 1.0
    scores = torch.zeros(4, 4, requires_grad=True)
    pairwise_matching_loss(scores, labels).loss.backward()
    assert scores.grad.abs().min() > 0  # every pair is trained (no mining)


def test_score_loss_switch():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.randn(6, 6)
    assert score_loss("pairwise", "hard", scores, labels).loss == pairwise_matching_loss(
        scores, labels).loss
    assert score_loss("triplet", "hard", scores, labels, 4.0).loss == batch_hard_triplet(
        scores, labels, 4.0).loss
    assert score_loss("triplet", "all", scores, labels, 4.0).loss == batch_all_triplet(
        scores, labels, 4.0).loss
    with pytest.raises(ValueError, match="loss must be"):
        score_loss("softmax", "hard", scores, labels)
