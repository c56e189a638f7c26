"""Bulk indexing on Ray Data: image files extracted in batches by a pool of workers, written
into the shards of a `ShardedGallery`; resumable.

    report = build(gallery, paths, workers=2, batch_size=64)   # `tal-index build`

The driver lists what the shards already hold (key, size, mtime) and hands Ray Data only the
files that are new or changed. Each worker (a Ray Data actor: `map_batches` with a callable
class, ``concurrency=workers``) opens the extractor once, reads its batch through the runtime's
decoder (pixel limit included), extracts it and sends each shard its part with the features
(`Shard.add`, one committed sync per shard and batch), then reports the batch's files back
for the progress bar (crops/s). Nothing but file paths and statuses flows through the driver.

Restartable: a batch is in the gallery once a shard acknowledged it, and an add is
idempotent, so a worker killed mid-batch is retried by Ray Data without duplicates, and a
rerun after a killed driver extracts only what the shards do not hold yet.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..console import progress
from ..engine import ReIDEngine
from ..images import ImageError, read_image
from ..index import market_metadata
from .ray_support import require_ray
from .routing import shard_of
from .sharded import ShardedGallery


@dataclass
class BuildReport:
    """What a build did: files asked for, already indexed, extracted now, skipped (path,
    reason), and the wall time of the extraction."""
    total: int = 0
    present: int = 0
    extracted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def crops_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def missing(gallery: ShardedGallery, paths: Sequence[str]) -> tuple[list[str], int]:
    """(files the shards do not hold as they are now, in path order; how many they hold)."""
    held = gallery.indexed()
    todo = []
    for path in sorted(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths)):
        try:
            st = os.stat(path)
        except OSError:
            todo.append(path)  # the worker reports why it cannot read it
            continue
        if held.get(path) != (st.st_size, st.st_mtime_ns):
            todo.append(path)
    return todo, len(paths) - len(todo)


def build(gallery: ShardedGallery, paths: Sequence[str], *, workers: int = 1,
          batch_size: int = 64, gpus_per_worker: float = 0, backend: str = "auto",
          device: str = "auto", max_pixels: int | None = None) -> BuildReport:
    """Extract the files of ``paths`` that the gallery lacks into its shards (module doc)."""
    data = require_ray("data")
    todo, present = missing(gallery, paths)
    report = BuildReport(total=len(set(paths)), present=present)
    if not todo:
        return report
    data.DataContext.get_current().enable_progress_bars = False
    dataset = data.from_items([{"path": p} for p in todo]).map_batches(
        Indexer, batch_size=batch_size, compute=data.ActorPoolStrategy(size=workers),
        batch_format="numpy",
        num_cpus=0 if gpus_per_worker else 1, num_gpus=gpus_per_worker,
        fn_constructor_kwargs={"bundle": gallery.bundle, "shards": gallery.actors,
                               "backend": backend, "device": device,
                               "max_pixels": max_pixels})
    started = time.perf_counter()
    with progress(total=len(todo), desc="indexing", unit="crop") as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for path, problem in zip(batch["path"], batch["problem"]):
                if problem:
                    report.skipped.append((str(path), str(problem)))
                else:
                    report.extracted += 1
            bar.update(len(batch["path"]))
    report.seconds = time.perf_counter() - started
    report.skipped.sort()
    return report


class Indexer:
    """One bulk-indexing worker: the extractor opened once, batches of files in, their
    features out to the shards (module doc)."""

    def __init__(self, bundle: str, shards: list, backend: str = "auto", device: str = "auto",
                 max_pixels: int | None = None):
        self.ray = require_ray()
        kwargs: dict[str, Any] = {} if max_pixels is None else {"max_pixels": max_pixels}
        self.engine = ReIDEngine(bundle, backend=backend, device=device, **kwargs)
        self.shards = shards

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        problems = [""] * len(paths)
        crops, kept = [], []
        for i, path in enumerate(paths):
            try:
                crops.append(read_image(path, self.engine.max_pixels))
                kept.append(i)
            except ImageError as err:
                problems[i] = err.problem
        if crops:
            features = self.engine.embed(crops)
            calls = []
            for s, shard in enumerate(self.shards):
                rows = [j for j, i in enumerate(kept) if shard_of(paths[i], len(self.shards))
                        == s]
                if rows:
                    calls.append(shard.add.remote(
                        [paths[kept[j]] for j in rows], {k: v[rows] for k, v in
                                                        features.items()},
                        [market_metadata(paths[kept[j]]) for j in rows]))
            for done in self.ray.get(calls):
                for path, reason in done.skipped:
                    problems[paths.index(path)] = reason
        return {"path": np.array(paths), "problem": np.array(problems)}
