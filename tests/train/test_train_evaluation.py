"""`tal_train.evaluation.rank_metrics` on a hand-made score matrix with the percentages worked
out by hand (Market-1501 protocol: junk and same-id same-camera entries ignored, a query
without a remaining match skipped), with first matches placed on the top-k edges."""
from __future__ import annotations

import torch

from tal_train.data.records import ImageRecord
from tal_train.evaluation import rank_metrics

# Gallery columns (pid, camera), best-scored first for every query (score = -column).
GALLERY = [(-1, 1),   # 0: junk, ignored for every query
           (100, 1),  # 1: q0's first match, rank 1
           (101, 0),  # 2: q1's pid on q1's camera, ignored for q1
           (101, 0),  # 3: the same
           (0, 2),    # 4: distractor
           (0, 2),    # 5: distractor
           (102, 1),  # 6: q2's match, rank 6 (one past top-5)
           (101, 1),  # 7: q1's match, rank 5 (cols 2, 3 ignored: the top-5 edge)
           (100, 2),  # 8: q0's second match, rank 8
           (0, 2),    # 9: distractor
           (103, 1),  # 10: q3's match, rank 10 (the top-10 edge)
           (104, 1),  # 11: q4's match, rank 11 (one past top-10)
           (105, 0)]  # 12: q5's only entry, same camera: q5 has no valid match, skipped
QUERIES = [(100, 0), (101, 0), (102, 0), (103, 0), (104, 0), (105, 0)]

# 5 valid queries. First-match ranks 1, 5, 6, 10, 11.
# AP: q0 (1/1 + 2/8) / 2 = 0.625; q1 1/5; q2 1/6; q3 1/10; q4 1/11.
# mAP = (0.625 + 0.2 + 0.16667 + 0.1 + 0.09091) / 5 = 0.236515...
EXPECTED = {"mAP": 23.65, "top1": 20.0, "top5": 40.0, "top10": 80.0}


def _records(rows: list[tuple[int, int]], split: str) -> list[ImageRecord]:
    return [ImageRecord(f"{split}/{i}.jpg", pid, cam, "target") for i, (pid, cam) in
            enumerate(rows)]


def test_rank_metrics_on_a_hand_made_matrix():
    scores = -torch.arange(len(GALLERY), dtype=torch.float32).repeat(len(QUERIES), 1)
    got = rank_metrics(scores, _records(QUERIES, "q"), _records(GALLERY, "g"))
    assert got == EXPECTED


def test_rank_metrics_follow_scores_not_column_order():
    perm = torch.randperm(len(GALLERY))
    scores = -perm.float().repeat(len(QUERIES), 1)  # column j sits at rank perm[j]
    gallery = [None] * len(GALLERY)
    for column, rank in enumerate(perm.tolist()):
        gallery[column] = GALLERY[rank]
    got = rank_metrics(scores, _records(QUERIES, "q"), _records(gallery, "g"))
    assert got == EXPECTED


def test_rank_metrics_units_and_rounding():
    # One query, its single match at rank 3 of 3: AP 1/3 -> 33.33, only top5/top10 hit.
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    got = rank_metrics(scores, _records([(7, 0)], "q"), _records([(1, 1), (2, 1), (7, 1)], "g"))
    assert got == {"mAP": 33.33, "top1": 0.0, "top5": 100.0, "top10": 100.0}
