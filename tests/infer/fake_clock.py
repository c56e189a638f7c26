"""A clock the test sets, injected into `tal_infer.batching` in place of its `time` module, so
latency tests check the batcher's decisions at exact times instead of bounding wall-clock time
(which flakes on two busy cores)."""
from __future__ import annotations

import threading


class FakeClock:
    """``monotonic()`` returns the time set by the test. Reads from other threads than the
    test's (the batcher's worker) are counted, so the test can wait until the worker has looked
    at the clock again after a change: its decision then was taken at the new time."""

    def __init__(self) -> None:
        self._now = 0.0
        self._owner = threading.get_ident()
        self._worker_reads = 0
        self._settled_at = 0
        self._read = threading.Condition()

    def monotonic(self) -> float:
        with self._read:
            if threading.get_ident() != self._owner:
                self._worker_reads += 1
                self._read.notify_all()
            return self._now

    def set(self, now: float) -> None:
        """Move the clock to ``now``."""
        with self._read:
            self._now = now
            self._settled_at = self._worker_reads + 2

    def wait_for_worker(self, timeout: float = 10.0) -> None:
        """Wait for two worker reads since the last `set`: the first may belong to a decision
        already under way, the second starts only after a decision taken at the new time.
        Only for a worker that keeps waiting (one that ran its batch reads no more)."""
        with self._read:
            if not self._read.wait_for(lambda: self._worker_reads >= self._settled_at, timeout):
                raise AssertionError(f"the worker did not read the clock within {timeout} s")
