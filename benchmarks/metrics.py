"""Time the rank metrics and k-reciprocal re-ranking at Market-1501 size; print a table.

Synthetic labels with the Market-1501 test split's shape: 3,368 queries, 15,913 gallery
entries, 751 identities (plus distractors), 6 cameras. Distances are random, which is the
worst case for nothing and the typical case for sorting cost. The baseline row is the
stable argsort of every row, the least work a sort-based evaluation (open-reid, torchreid)
must do; it is not a full metric implementation.
"""
from __future__ import annotations

import time
import tracemalloc
from typing import Callable

import click
import numpy as np

from tal_infer.metrics import evaluate, evaluate_scores
from tal_infer.reranking import k_reciprocal


def market_like(rng: np.random.Generator, nq: int, ng: int):
    g_pids = rng.integers(1, 752, ng)
    g_pids[rng.random(ng) < 0.2] = 0  # distractors
    return (rng.integers(1, 752, nq), g_pids, rng.integers(0, 6, nq), rng.integers(0, 6, ng))


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best wall time in s, peak traced allocation in MiB) over `repeat` runs."""
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return best, peak


def sort_every_row(dist: np.ndarray, rows: int = 256) -> None:
    for start in range(0, len(dist), rows):
        np.argsort(dist[start:start + rows], axis=1, kind="stable")


EPILOG = """\b
Examples:
  python benchmarks/metrics.py
  python benchmarks/metrics.py --rerank-queries 3368 --rerank-gallery 15913
"""


@click.command(epilog=EPILOG)
@click.option("--queries", default=3368, show_default=True)
@click.option("--gallery", default=15913, show_default=True)
@click.option("--rerank-queries", default=500, show_default=True,
              help="Queries for the re-ranking row (it needs the N x N distances).")
@click.option("--rerank-gallery", default=3000, show_default=True)
@click.option("--repeat", default=3, show_default=True)
def main(queries: int, gallery: int, rerank_queries: int, rerank_gallery: int,
         repeat: int) -> None:
    """Time `tal_infer.metrics.evaluate` and `tal_infer.reranking.k_reciprocal`."""
    rng = np.random.default_rng(0)
    labels = market_like(rng, queries, gallery)
    dist32 = rng.random((queries, gallery), dtype=np.float32)
    dist64 = dist32.astype(np.float64)
    scores32 = -dist32
    size = f"{queries} x {gallery}"
    rows = [
        ("evaluate, float32 distances", size, *measure(lambda: evaluate(dist32, *labels), repeat)),
        ("evaluate, float64 distances", size, *measure(lambda: evaluate(dist64, *labels), repeat)),
        ("evaluate_scores, float32", size,
         *measure(lambda: evaluate_scores(scores32, *labels), repeat)),
        ("baseline: stable argsort of every row", size,
         *measure(lambda: sort_every_row(dist32), repeat)),
    ]
    x = rng.normal(size=(rerank_queries + rerank_gallery, 16)).astype(np.float32)
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0))
    nq = rerank_queries
    q_g, q_q, g_g = d[:nq, nq:], d[:nq, :nq], d[nq:, nq:]
    del d
    rows.append(("k_reciprocal (k1=20, k2=6)", f"{nq} x {rerank_gallery}",
                 *measure(lambda: k_reciprocal(q_g, q_q, g_g), 1)))

    click.echo(f"{'what':40s} {'size':>15s} {'seconds':>9s} {'peak MiB':>9s}")
    for what, shape, seconds, peak in rows:
        click.echo(f"{what:40s} {shape:>15s} {seconds:9.3f} {peak:9.1f}")
    base = rows[3][2]
    click.echo(f"\nevaluate (float32) vs sorting every row: {base / rows[0][2]:.1f}x faster")


if __name__ == "__main__":
    main()
