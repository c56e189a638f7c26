"""Bootstrap confidence intervals of re-id results, over queries and over training seeds.

One method on one target is a matrix V [S, Q]: a per-query value (AP, or the top-1 hit) for S
independent training runs (seeds) on the same Q queries; its result is the mean of V. Two
sources make that mean uncertain: which queries the target happens to hold, and the randomness
of training. The **two-way bootstrap** (the default) draws, per replicate, S seeds and Q queries
with replacement, independently, and takes the mean of V over the drawn rows and columns; the
interval is the percentile interval of the replicates (95%: the 2.5th and 97.5th). ``over``
restricts it to one source (``("queries",)``: seeds fixed, the interval of a single run's
uncertainty; ``("seeds",)``: queries fixed). Several targets: the statistic is the mean of the
per-target means; queries are drawn within each target, seeds jointly.

**Paired comparisons**: pass the per-query differences of two methods (same seeds, same queries)
— far tighter than comparing two separate intervals, since most of the query-to-query variation
is shared. With 3 seeds the seed draw can only produce 10 distinct seed multisets: read the
seed part of an interval as a rough one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SOURCES = ("seeds", "queries")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high


def _block_replicates(values: np.ndarray, seeds: np.ndarray, resample_queries: bool,
                      rng: np.random.Generator) -> np.ndarray:
    """Replicate means of one target [R] given the drawn seed indices [R, S]."""
    replicates, q = seeds.shape[0], values.shape[1]
    if resample_queries:  # multinomial counts of Q draws = a bootstrap sample of the queries
        counts = rng.multinomial(q, np.full(q, 1.0 / q), size=replicates)
    else:
        counts = np.ones((replicates, q))
    per_seed = counts @ values.T / q                     # [R, S]: each seed's mean over the draw
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def bootstrap_interval(blocks: Sequence[np.ndarray], replicates: int = 2000,
                       over: Sequence[str] = SOURCES, level: float = 0.95,
                       seed: int = 0) -> Interval:
    """Mean and percentile interval of the mean over targets of the mean of each [S, Q] block.

    All blocks need the same S (the seeds, in the same order); Q may differ per target.
    """
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not blocks or any(b.ndim != 2 or b.size == 0 for b in blocks):
        raise ValueError("bootstrap_interval needs non-empty [seeds, queries] blocks")
    s = blocks[0].shape[0]
    if any(b.shape[0] != s for b in blocks):
        raise ValueError(f"every block needs the same number of seeds, got "
                         f"{[b.shape[0] for b in blocks]}")
    if unknown := set(over) - set(SOURCES):
        raise ValueError(f"over must name {SOURCES}, got {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    seeds = (rng.integers(0, s, (replicates, s)) if "seeds" in over
             else np.broadcast_to(np.arange(s), (replicates, s)))
    stats = sum(_block_replicates(b, seeds, "queries" in over, rng) for b in blocks) / len(blocks)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    mean = float(np.mean([b.mean() for b in blocks]))
    return Interval(mean, float(low), float(high))
