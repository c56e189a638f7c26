"""Bootstrap intervals over queries and seeds (`tal_train.confidence`): cases with a known
answer, the normal-theory width for many iid queries, and paired differences."""
from __future__ import annotations

import numpy as np
import pytest

from tal_train.confidence import bootstrap_interval


def test_constant_values_give_a_point_interval():
    got = bootstrap_interval([np.full((3, 50), 0.4)])
    assert (got.mean, got.low, got.high) == pytest.approx((0.4, 0.4, 0.4))


def test_query_interval_matches_normal_theory_for_iid_queries():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.2, (1, 400))
    got = bootstrap_interval([values], replicates=4000, over=("queries",), seed=1)
    half = 1.96 * values.std(ddof=1) / np.sqrt(400)
    assert got.mean == pytest.approx(values.mean())
    assert (got.high - got.low) / 2 == pytest.approx(half, rel=0.12)
    assert got.low < values.mean() < got.high


def test_seed_interval_spans_the_seed_means_and_ignores_query_noise_when_asked():
    per_seed = np.array([[0.3], [0.5], [0.7]]) * np.ones((3, 20))
    got = bootstrap_interval([per_seed], over=("seeds",))
    assert 0.3 - 1e-9 <= got.low < 0.45 and 0.55 < got.high <= 0.7 + 1e-9
    assert bootstrap_interval([per_seed], over=("queries",)).high == pytest.approx(0.5)
    both = bootstrap_interval([per_seed])
    assert both.low == pytest.approx(got.low) and both.high == pytest.approx(got.high)


def test_paired_difference_of_a_constant_shift_is_exact():
    rng = np.random.default_rng(2)
    a = rng.random((3, 60))
    diff = bootstrap_interval([a + 0.05 - a])
    assert diff.low == pytest.approx(0.05) and diff.high == pytest.approx(0.05)
    assert diff.excludes_zero()


def test_several_targets_average_their_means():
    got = bootstrap_interval([np.full((2, 10), 0.2), np.full((2, 30), 0.6)])
    assert got.mean == pytest.approx(0.4) and got.low == pytest.approx(0.4)


def test_bad_blocks_are_refused():
    with pytest.raises(ValueError, match="same number of seeds"):
        bootstrap_interval([np.zeros((2, 5)), np.zeros((3, 5))])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([np.zeros((0, 5))])
    with pytest.raises(ValueError, match="over must"):
        bootstrap_interval([np.zeros((1, 5))], over=("runs",))
