"""Micro-batching: many callers' small requests become full batches for one model call.

Video-analytics pipelines embed a few crops per frame from many threads (one per camera);
the extractor is fastest on full batches. `MicroBatcher`
collects items until ``max_batch`` are waiting or the oldest has waited ``max_latency_s``,
runs ``fn(items) -> results`` on one worker thread, and hands each caller its own result.
A batch is taken as soon as it is full, so under load every batch is full and latency is
the model's; when idle, no item waits longer than ``max_latency_s`` before its batch starts.

One caller's bad item must not fail the others batched with it, so ``check`` vets every item
in the submitting thread before it joins the queue: a refused item's future holds the error
of that item alone (`ReIDEngine.batcher` checks each crop this way).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Generic, Sequence, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Thread-safe batching front of ``fn``; use as a context manager (or call `close`).

    ``check(item)``, when given, runs in the submitting thread and returns the item that joins
    the batch (e.g. converted); if it raises, only that item's future fails. If ``fn`` raises,
    every caller of that batch gets the exception; other batches go on. ``fn`` must return one
    result per item, in order.
    """

    def __init__(self, fn: Callable[[list[In]], Sequence[Out]], max_batch: int,
                 max_latency_s: float, name: str = "micro-batcher",
                 check: Callable[[In], In] | None = None):
        if max_batch < 1 or max_latency_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_latency_s >= 0, got {max_batch}, "
                             f"{max_latency_s}")
        self._fn, self.max_batch, self.max_latency_s = fn, max_batch, max_latency_s
        self._check = check
        self._pending: deque[tuple[float, In, Future]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: In) -> "Future[Out]":
        """Queue one item; the future resolves to its result (or raises the exception of
        ``check`` for this item, or of ``fn`` for its batch)."""
        future: Future[Out] = Future()
        if self._check is not None:
            try:
                item = self._check(item)
            except Exception as err:  # the item never joins a batch
                future.set_exception(err)
                return future
        with self._wake:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._pending.append((time.monotonic(), item, future))
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._wake.notify()
        return future

    def __call__(self, item: In, timeout: float | None = None) -> Out:
        """Submit one item and wait for its result."""
        return self.submit(item).result(timeout)

    def close(self) -> None:
        """Stop accepting items, run what is queued, and wait for the worker to finish."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join()

    def __enter__(self) -> "MicroBatcher[In, Out]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _next_batch(self) -> list[tuple[float, In, Future]] | None:
        """Wait for a full batch, the oldest item's deadline, or close; None when done."""
        with self._wake:
            while True:
                if self._pending:
                    deadline = self._pending[0][0] + self.max_latency_s
                    wait = deadline - time.monotonic()
                    if len(self._pending) >= self.max_batch or wait <= 0 or self._closed:
                        count = min(self.max_batch, len(self._pending))
                        return [self._pending.popleft() for _ in range(count)]
                    self._wake.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._wake.wait()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [(item, fut) for _, item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = list(self._fn([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for "
                                       f"{len(live)} items")
            except BaseException as err:  # goes to the callers; the worker keeps serving
                for _, fut in live:
                    fut.set_exception(err)
                continue
            for (_, fut), result in zip(live, results):
                fut.set_result(result)
