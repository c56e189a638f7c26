"""Faults on a real local Ray, nothing mocked: a shard actor's worker process SIGKILLed in the
middle of an add, a search while a shard restarts, and a bulk build whose driver process is
SIGKILLed and then rerun."""
from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path



from runtime_fixtures import write_crops
from tal_infer.cluster.bulk import build
from tal_infer.cluster.routing import shard_of
from tal_infer.cluster.sharded import ShardedGallery
from tal_infer.engine import ReIDEngine
from tal_infer.retrieval import RetrievalOptions

from cluster_fixtures import gallery_names

PATIENT_S = 300  # bounds on waits, far above their time on a busy 2-core CI machine


def entries(root: Path, shard: int) -> int:
    """Committed entries of one shard, read from its catalog as another process would."""
    db = root / f"shard-{shard}" / "index" / "index.sqlite"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # the catalog is being created
        return 0


def wait_for(condition, what: str, timeout_s: float = PATIENT_S, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def pid_of(gallery: ShardedGallery, shard: int) -> int:
    return gallery.stats()["shards"][f"shard-{shard}"]["pid"]


def test_shard_killed_mid_add_keeps_every_entry_once(ray_cluster, bundle, tmp_path):
    files = [str(p) for p in write_crops(tmp_path / "crops", gallery_names(150), seed=4)]
    gallery = ShardedGallery(tmp_path / "g", bundle, shards=1, search_timeout_s=PATIENT_S)
    before = files[:40]
    gallery.add_files(before)                                   # acknowledged
    victim = pid_of(gallery, 0)
    report: list = []
    adding = threading.Thread(target=lambda: report.append(gallery.add_files(files)))
    adding.start()                              # the shard extracts 560 crops, 32 per commit
    wait_for(lambda: entries(tmp_path / "g", 0) > len(before), "the add's first commit")
    at_kill = entries(tmp_path / "g", 0)
    os.kill(victim, signal.SIGKILL)
    adding.join(PATIENT_S)
    assert not adding.is_alive() and report, "the add was not acknowledged after the restart"
    assert at_kill < len(files), "the add had finished before the kill"
    assert pid_of(gallery, 0) != victim                          # Ray restarted the actor
    assert gallery.check() == {"shard-0": len(files)}            # nothing lost, nothing twice
    assert sorted(gallery.indexed()) == sorted(files)


def test_search_while_a_shard_restarts_is_marked_partial_then_waits(ray_cluster, bundle, crops,
                                                                    tmp_path):
    gallery_files, query_files = crops
    files = [str(p) for p in gallery_files[:60]]
    gallery = ShardedGallery(tmp_path / "g", bundle, shards=2, search_timeout_s=PATIENT_S)
    gallery.add_files(files)
    queries = ReIDEngine(bundle).embed_files(query_files).features
    everything = gallery.search(queries, RetrievalOptions(topk=len(files)))
    top = RetrievalOptions(topk=8)
    complete = gallery.search(queries, top)
    victim = pid_of(gallery, 1)
    os.kill(victim, signal.SIGKILL)
    quick = gallery.search(queries, top, timeout_s=0.5)      # no restart is that fast
    assert quick.partial and "shard-1" in quick.missing
    answered = {f"shard-{i}" for i in range(2)} - set(quick.missing)
    want = [[(h.key, h.score) for h in hits if f"shard-{shard_of(h.key, 2)}" in answered][:8]
            for hits in everything.hits]              # exactly the answering shards' best
    assert [[(h.key, h.score) for h in hits] for hits in quick.hits] == want
    waited = gallery.search(queries, top)                    # waits (bounded) for the restart
    assert not waited.partial and waited.hits == complete.hits
    assert pid_of(gallery, 1) != victim


DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], namespace="tal-reid", log_to_driver=False)
from tal_infer.cluster.bulk import build
from tal_infer.cluster.sharded import ShardedGallery
gallery = ShardedGallery(sys.argv[2], sys.argv[3], shards=2)
build(gallery, sys.argv[4:], workers=1, batch_size=8)
print("the build finished")
"""


def unlocked(root: Path, shards: int) -> bool:
    """Whether no process holds a shard's index writer lock (the killed driver's shards are
    gone)."""
    for i in range(shards):
        lock = root / f"shard-{i}" / "index" / "lock"
        if not lock.exists():
            continue
        with open(lock, "ab") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return True


def test_bulk_build_resumes_after_its_driver_is_killed(ray_cluster, bundle, tmp_path):
    files = [str(p) for p in write_crops(tmp_path / "crops", gallery_names(100), seed=5)]
    root = tmp_path / "g"
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(root), str(bundle),
                               *files], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: entries(root, 0) + entries(root, 1) > 0 or driver.poll() is not None,
                 "the first committed batch")
    finally:
        driver.send_signal(signal.SIGKILL)
        output = driver.communicate()[0].decode(errors="replace")
    assert "the build finished" not in output, "the build ended before the kill"
    wait_for(lambda: unlocked(root, 2), "the killed driver's shards to go", every_s=0.2)
    done = entries(root, 0) + entries(root, 1)
    assert 0 < done < len(files)
    gallery = ShardedGallery(root, bundle, search_timeout_s=PATIENT_S)
    report = build(gallery, files, workers=1, batch_size=16)
    assert report.present >= done and report.present + report.extracted == len(files)
    assert report.extracted > 0 and not report.skipped
    assert sum(gallery.check().values()) == len(files)
    assert sorted(gallery.indexed()) == sorted(files)
    again = build(gallery, files, workers=1)     # nothing left to do
    assert (again.present, again.extracted) == (len(files), 0)


