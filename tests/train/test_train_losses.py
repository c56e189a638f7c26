"""Batch-hard triplet on QAConv scores: a hand-computed example and its gradient routing."""
from __future__ import annotations

import pytest
import torch

from tal_train.losses import batch_all_triplet, batch_hard_triplet


# labels a a b b; higher score = more alike
SCORES = [[9.0, 3.0, 5.0, 0.5],
          [3.0, 9.0, 2.0, 4.0],
          [5.0, 2.0, 9.0, 6.0],
          [1.0, 4.0, 7.0, 9.0]]
LABELS = torch.tensor([0, 0, 1, 1])


def test_hand_computed_example():
    scores = torch.tensor(SCORES, requires_grad=True)
    labels = LABELS
    # anchor 0: hardest pos 3 (col 1), hardest neg 5 (col 2): [2 - 3 + 5] = 4
    # anchor 1: pos 3, neg 4 (col 3): [2 - 3 + 4] = 3
    # anchor 2: pos 6, neg 5 (col 0): [2 - 6 + 5] = 1
    # anchor 3: pos 7, neg 4 (col 1): [2 - 7 + 4] = 0
    result = batch_hard_triplet(scores, labels, margin=2.0)
    assert result.loss.item() == pytest.approx((4 + 3 + 1 + 0) / 4)
    assert result.accuracy == pytest.approx(0.5)  # anchors 2 and 3: pos > neg
    result.loss.backward()
    expected = torch.zeros(4, 4)
    for row, pos, neg in [(0, 1, 2), (1, 0, 3), (2, 3, 0)]:  # anchor 3 is inactive (hinge 0)
        expected[row, pos] -= 0.25
        expected[row, neg] += 0.25
    torch.testing.assert_close(scores.grad, expected)


def test_batch_all_hand_computed_example():
    scores = torch.tensor(SCORES, requires_grad=True)
    # (anchor, positive, negative) hinges [2 - S_ap + S_an]_+ with margin 2:
    # a0 p1: n2 -> 4, n3 -> 0;  a1 p0: n2 -> 1, n3 -> 3;  a2 p3: n0 -> 1, n1 -> 0;  a3: all 0
    result = batch_all_triplet(scores, LABELS, margin=2.0)
    assert result.loss.item() == pytest.approx(9 / 8)
    assert result.accuracy == pytest.approx(6 / 8)  # triples with S_ap > S_an
    result.loss.backward()
    expected = torch.zeros(4, 4)
    for a, p, n in [(0, 1, 2), (1, 0, 2), (1, 0, 3), (2, 3, 0)]:  # the active triples
        expected[a, p] -= 1 / 8
        expected[a, n] += 1 / 8
    torch.testing.assert_close(scores.grad, expected)


def test_anchor_without_positive_is_left_out():
    scores = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 5.0], [2.0, 5.0, 0.0]])
    labels = torch.tensor([0, 0, 1])  # anchor 2 has no positive
    result = batch_hard_triplet(scores, labels, margin=1.0)
    # anchor 0: [1 - 1 + 2] = 2; anchor 1: [1 - 1 + 5] = 5
    assert result.loss.item() == pytest.approx(3.5)


@pytest.mark.parametrize("loss", [batch_hard_triplet, batch_all_triplet])
def test_batch_without_triplets_is_an_error(loss):
    with pytest.raises(ValueError, match="two images"):
        loss(torch.zeros(3, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="must be"):
        loss(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
