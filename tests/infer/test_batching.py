"""MicroBatcher: results reach the right caller, batches fill under load, latency is bounded."""
from __future__ import annotations

import threading

import pytest

from tal_infer.batching import MicroBatcher


class Recorder:
    """A batch function that squares items and records every batch it saw."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list[int]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, items):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        return [x * x for x in items]


def test_every_caller_gets_its_own_result_across_threads():
    fn = Recorder()
    results: dict[int, int] = {}

    def caller(base):
        futures = [(x, batcher.submit(x)) for x in range(base, base + 50)]
        for x, fut in futures:
            results[x] = fut.result(5)

    with MicroBatcher(fn, max_batch=16, max_latency_s=0.005) as batcher:
        threads = [threading.Thread(target=caller, args=(t * 1000,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert batcher(-3, timeout=5) == 9
    assert len(results) == 400 and all(v == k * k for k, v in results.items())
    seen = [x for batch in fn.batches for x in batch]
    assert sorted(seen) == sorted(list(results) + [-3])
    assert all(len(b) <= 16 for b in fn.batches)
    for t in range(8):  # each thread's items were batched in its submission order
        mine = [x for x in seen if t * 1000 <= x < t * 1000 + 50]
        assert mine == sorted(mine)


def test_batches_are_full_under_load():
    gate = threading.Event()
    fn = Recorder(gate)
    with MicroBatcher(fn, max_batch=8, max_latency_s=0.001) as batcher:
        first = batcher.submit(-1)  # its batch blocks the worker until the gate opens
        assert fn.entered.wait(5)
        futures = [batcher.submit(x) for x in range(8 * 5 + 3)]
        gate.set()
        assert [f.result(5) for f in futures] == [x * x for x in range(43)]
        assert first.result(5) == 1
    sizes = [len(b) for b in fn.batches]
    assert sizes[0] == 1 and sizes[1:] == [8, 8, 8, 8, 8, 3]


def test_idle_item_waits_for_company_until_its_deadline(fake_clock):
    fn = Recorder()
    with MicroBatcher(fn, max_batch=64, max_latency_s=0.05) as batcher:
        first = batcher.submit(3)  # at t = 0: deadline 0.05
        fake_clock.set(0.049)
        fake_clock.wait_for_worker()
        assert not fn.entered.is_set()
        second = batcher.submit(4)  # joins; the deadline stays the oldest item's
        fake_clock.set(0.05)
        assert first.result(5) == 9 and second.result(5) == 16
        late = batcher.submit(5)  # at t = 0.05 and alone: deadline 0.1
        fake_clock.set(0.0999)
        fake_clock.wait_for_worker()
        assert not late.done()
        fake_clock.set(0.1)
        assert late.result(5) == 25
    assert fn.batches == [[3, 4], [5]]


def test_exception_reaches_exactly_the_callers_of_that_batch():
    def fn(items):
        if 13 in items:
            raise ValueError("bad crop 13")
        return items

    with MicroBatcher(fn, max_batch=4, max_latency_s=0.01) as batcher:
        bad = [batcher.submit(x) for x in (12, 13)]
        for fut in bad:
            with pytest.raises(ValueError, match="bad crop 13"):
                fut.result(5)
        assert batcher(5) == 5  # the worker survived


def test_wrong_result_count_is_an_error_for_the_callers():
    with MicroBatcher(lambda items: items[:-1], max_batch=2, max_latency_s=0.01) as batcher:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            batcher(1, timeout=5)


def test_close_runs_queued_items_then_refuses_new_ones(fake_clock):
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4, max_latency_s=10.0)
    futures = [batcher.submit(x) for x in range(6)]  # 4 run at once; 2 wait for t = 10
    closing = threading.Thread(target=batcher.close, daemon=True)
    closing.start()
    closing.join(10)  # the clock stays at 0: only a flush on close lets this return
    assert not closing.is_alive()
    assert [f.result(0) for f in futures] == [x * x for x in range(6)]
    assert not batcher._worker.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_cancelled_items_are_not_run():
    gate = threading.Event()
    fn = Recorder(gate)
    with MicroBatcher(fn, max_batch=2, max_latency_s=0.001) as batcher:
        first = batcher.submit(1)
        assert fn.entered.wait(5)
        cancelled, kept = batcher.submit(2), batcher.submit(3)
        assert cancelled.cancel()
        gate.set()
        assert first.result(5) == 1 and kept.result(5) == 9
    assert [x for b in fn.batches for x in b] == [1, 3]


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda x: x, max_batch=0, max_latency_s=0.1)
