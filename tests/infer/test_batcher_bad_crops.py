"""One caller's bad crop fails that call only: crops are checked before they join a batch.

The batches are made deterministic with events (the batch function waits until every thread has
submitted), never with wall-clock bounds.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tal_infer import ReIDEngine
from tal_infer.batching import MicroBatcher
from tal_infer.images import ImageError

THREADS, CALLS, BAD_EVERY = 8, 50, 10


class GatedRecorder:
    """Wraps a batch function: records each batch and holds the first until ``gate`` opens."""

    def __init__(self, fn, gate: threading.Event):
        self.fn, self.gate, self.batches = fn, gate, []

    def __call__(self, items):
        assert self.gate.wait(30), "the submitting threads never finished"
        self.batches.append(list(items))
        return self.fn(items)


def test_check_failure_reaches_only_its_own_caller():
    gate = threading.Event()
    record = GatedRecorder(lambda items: [x * x for x in items], gate)

    def check(x):
        if x == 13:
            raise ValueError("item 13 is unlucky")
        return x + 1000  # what joins the batch is the checked item

    with MicroBatcher(record, max_batch=8, max_latency_s=0.0, check=check) as batcher:
        futures = {x: batcher.submit(x) for x in range(10, 17)}
        assert futures[13].done()  # refused at once, never queued
        gate.set()
        with pytest.raises(ValueError, match="item 13 is unlucky"):
            futures[13].result(30)
        assert {x: f.result(30) for x, f in futures.items() if x != 13} == \
            {x: (x + 1000) ** 2 for x in futures if x != 13}
    assert sorted(x for batch in record.batches for x in batch) == \
        [x + 1000 for x in range(10, 17) if x != 13]


@pytest.fixture(scope="module")
def engine(fake_bundle):
    return ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu", batch_size=8)


def test_threads_never_fail_for_another_threads_bad_crops(engine, monkeypatch):
    rng = np.random.default_rng(0)
    crops = [[rng.integers(0, 256, (40, 20, 3), dtype=np.uint8) for _ in range(CALLS)]
             for _ in range(THREADS)]
    for i in range(0, CALLS, BAD_EVERY):  # thread 0 sends a 1x1 crop every 10th call
        crops[0][i] = np.zeros((1, 1, 3), np.uint8)
    owner = {id(c): t for t, mine in enumerate(crops) for c in mine}
    want = {id(c): engine.embed([c]) for mine in crops for c in mine if c.shape[0] > 1}

    gate = threading.Event()
    record = GatedRecorder(engine.embed, gate)
    monkeypatch.setattr(engine, "embed", record)  # the batcher's batch function calls it
    rounds = threading.Barrier(THREADS)  # every thread submits its i-th crop in round i
    futures: list[list] = [[] for _ in range(THREADS)]

    def submit_all(t):
        for crop in crops[t]:
            futures[t].append(batcher.submit(crop))
            rounds.wait(30)

    with engine.batcher(max_batch=32, max_latency_s=0.0) as batcher:
        threads = [threading.Thread(target=submit_all, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gate.set()  # every crop is queued (or refused) before the first batch runs
        for t in range(THREADS):
            for i, (crop, future) in enumerate(zip(crops[t], futures[t])):
                if crop.shape[0] == 1:
                    with pytest.raises(ImageError, match=r"^crop of shape \(1, 1, 3\): image "
                                                         r"too small \(1x1 pixels"):
                        future.result(30)
                    continue
                got = future.result(30)  # never raises for a good crop
                for key, value in got.items():
                    np.testing.assert_allclose(value, want[id(crop)][key], rtol=1e-5,
                                               atol=1e-6, err_msg=f"thread {t} crop {i}")
    batched = [[owner[id(c)] for c in batch] for batch in record.batches]
    assert sorted(t for batch in batched for t in batch) == sorted(
        [0] * (CALLS - CALLS // BAD_EVERY) + [t for t in range(1, THREADS) for _ in range(CALLS)])
    assert sum(len(set(batch)) == THREADS for batch in batched) >= 10  # all threads mixed
