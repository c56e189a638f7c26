"""SIGKILL at a chosen step of an index writer, for crash-safety tests run in a child process.

`install(kill_at)` wraps the index's durability points: after every fsync, before and after
every folder removal, and before and after every commit (before COMMIT, SQLite must roll the
transaction back). The kill_at-th such step kills the process; 0 never does.
"""
from __future__ import annotations

import contextlib
import os
import signal

from tal_infer.index import catalog, store


def install(kill_at: int) -> None:
    points = 0
    real_fsync, real_remove, real_transaction = (store._fsync, store._remove_tree,
                                                 catalog.transaction)

    def point():
        nonlocal points
        points += 1
        if points == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd):
        real_fsync(fd)
        point()

    def remove(folder):
        point()
        real_remove(folder)
        point()

    @contextlib.contextmanager
    def transaction(con):
        with real_transaction(con):
            yield con
            point()  # before COMMIT: SQLite must roll back
        point()

    store._fsync, store._remove_tree, catalog.transaction = fsync, remove, transaction
