"""Sampler invariants: batch composition, identities per batch, nearest-identity grouping on a
planted score matrix, fallbacks, and per-rank sharding of an epoch plan."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from tal_train.samplers import (EpochPlan, draw_images, identity_batches, images_by_identity,
                                nearest_identity_batches, pk_batches, usable_batch_ids)


def _dataset(num_ids: int, seed: int = 0) -> tuple[list[int], dict[int, list[int]]]:
    """Labels 10, 20, ... with 1-7 images each, interleaved record order."""
    rng = np.random.default_rng(seed)
    labels = [10 * (i + 1) for i in range(num_ids) for _ in range(int(rng.integers(1, 8)))]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    images = images_by_identity(labels)
    return labels, images


def _check_composition(batches, labels, batch_ids, instances):
    for batch in batches:
        assert len(batch) == batch_ids * instances
        ids = [labels[i] for i in batch]
        # `instances` consecutive images per identity, identities distinct
        groups = [ids[j:j + instances] for j in range(0, len(ids), instances)]
        assert all(len(set(g)) == 1 for g in groups)
        assert len({g[0] for g in groups}) == batch_ids


def test_nearest_identity_grouping_on_planted_scores():
    labels, images = _dataset(12)
    ids = list(images)
    # planted structure: identities form 3 clusters of 4; within a cluster the score falls
    # with index distance, so each identity's 3 nearest are exactly its cluster mates
    cluster = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, (12, 12))
    for a in range(12):
        for b in range(12):
            if cluster[a] == cluster[b]:
                scores[a, b] = 10 - abs(a - b)
    batches = nearest_identity_batches(scores, ids, images, batch_ids=4, instances=4,
                                       rng=np.random.default_rng(0))
    assert len(batches) == 12  # one batch per identity
    _check_composition(batches, labels, 4, 4)
    anchors = set()
    for batch in batches:
        members = [labels[i] for i in batch[::4]]
        anchor = ids.index(members[0])
        anchors.add(anchor)
        assert {ids.index(m) for m in members} == set(np.flatnonzero(cluster == cluster[anchor]))
        # nearest first: index distance to the anchor never decreases
        dist = [abs(ids.index(m) - anchor) for m in members[1:]]
        assert dist == sorted(dist)
    assert anchors == set(range(12))


def test_nearest_batches_use_scores_not_order():
    labels, images = _dataset(6)
    ids = list(images)
    scores = np.zeros((6, 6))
    scores[0, 5] = scores[5, 0] = 1.0
    batches = nearest_identity_batches(scores, ids, images, 2, 2, np.random.default_rng(0))
    pairs = {tuple(labels[i] for i in b[::2]) for b in batches}
    assert (ids[0], ids[5]) in pairs and (ids[5], ids[0]) in pairs


def test_draw_images_without_and_with_replacement():
    rng = np.random.default_rng(0)
    many = draw_images([3, 4, 5, 6, 7], 4, rng)
    assert len(set(many)) == 4 and set(many) <= {3, 4, 5, 6, 7}  # no repeats
    few = draw_images([8, 9], 4, rng)
    assert len(few) == 4 and set(few) == {8, 9}  # all of them, plus repeats
    assert draw_images([1], 4, rng) == [1, 1, 1, 1]


def test_pk_batches_cover_every_identity():
    labels, images = _dataset(10)
    ids = list(images)
    batches = pk_batches(ids, images, 4, 4, np.random.default_rng(0))
    assert len(batches) == 3  # 10 identities in groups of 4, the last topped up
    _check_composition(batches, labels, 4, 4)
    assert {labels[i] for b in batches for i in b} == set(ids)


def test_fallbacks_for_small_identity_sets(caplog):
    with caplog.at_level(logging.WARNING):
        assert usable_batch_ids("domain 'x'", 1, 16) == 0
        assert usable_batch_ids("domain 'y'", 3, 16) == 3
        assert usable_batch_ids("domain 'z'", 40, 16) == 16
    assert "domain 'x' has 1 identity" in caplog.text
    assert "domain 'y' has only 3 identities" in caplog.text
    assert "domain 'z'" not in caplog.text
    labels, images = _dataset(3)
    rng = np.random.default_rng(0)
    batches = identity_batches("gs", np.eye(3), list(images), images, 3, 4, rng)
    _check_composition(batches, labels, 3, 4)
    assert identity_batches("gs", None, [], {}, 0, 4, rng) == ()


def test_plan_iterations_cycle_and_shard_across_ranks():
    domain_batches = (((1,), (2,), (3,)), (), ((7,), (8,)))  # domain 1 skipped
    hybrid = tuple((100 + i,) for i in range(5))
    plan = EpochPlan(domain_batches, hybrid)
    assert plan.default_iterations() == 5 and plan.default_iterations(2) == 2
    single = plan.iterations(6)
    assert [it.hybrid for it in single] == [(100,), (101,), (102,), (103,), (104,), (100,)]
    assert [dict(it.per_domain) for it in single[:4]] == [
        {0: (1,), 2: (7,)}, {0: (2,), 2: (8,)}, {0: (3,), 2: (7,)}, {0: (1,), 2: (8,)}]
    rank0, rank1 = plan.iterations(3, 0, 2), plan.iterations(3, 1, 2)
    assert rank0 == single[0::2] and rank1 == single[1::2]  # disjoint shares of one sequence
    it = single[0]
    assert it.indices() == [1, 7, 100] and it.sizes() == [1, 1, 1]


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="'gs' or 'pk'"):
        identity_batches("random", None, [1, 2], {1: [0], 2: [1]}, 2, 2,
                         np.random.default_rng(0))
