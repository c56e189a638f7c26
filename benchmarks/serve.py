"""The HTTP service (tal-serve's API on Ray Serve) under load on 127.0.0.1: a bounded number of
concurrent clients send search requests (one query crop each, as a camera pipeline would) for
a bounded time; requests/s, p50/p99 latency and errors, then a check that the service answers
as the Python API does on the same shards.

The gallery: ``--gallery`` crops of benchmarks/cascade.py's generated unseen domains (its
``--workdir``: model and crops, made there when missing), added through the API itself (their
time is reported too). Queries: the gallery's query crops, round robin.

    python benchmarks/serve.py --workdir .cache/cascade --clients 4 --seconds 60
Last line: ``serve: clients=C seconds=S requests=N rps=R p50_ms=A p99_ms=B errors=E
same_as_api=true|false``.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import click
import numpy as np

from cascade import load, prepare_gallery, prepare_model
from machine import describe

from tal_infer.cluster import service
from tal_infer.cluster.client import ServiceClient
from tal_infer.cluster.sharded import ShardedGallery
from tal_infer.errors import TalError
from tal_infer.retrieval import RetrievalOptions

TOKEN = "benchmark-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cache/cascade"),
              show_default=True)
@click.option("--size", default=100_000, show_default=True,
              help="The cascade.py crop set to draw from.")
@click.option("--gallery", "gallery_size", default=2000, show_default=True,
              help="Crops added through the API.")
@click.option("--shards", default=2, show_default=True)
@click.option("--clients", default=4, show_default=True, help="Concurrent HTTP clients.")
@click.option("--seconds", default=60.0, show_default=True, help="Load duration.")
@click.option("--candidates", default=0, show_default=True, help="M (0: exhaustive).")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Use this bundle (with a descriptor) instead of cascade.py's model.")
@click.option("--seed", default=7, show_default=True)
def main(workdir: Path, size: int, gallery_size: int, shards: int, clients: int,
         seconds: float, candidates: int, bundle: Path | None, seed: int) -> None:
    """Print the load test's numbers and the last line."""
    started = time.time()
    bundle = bundle or prepare_model(workdir, progress=False)
    gallery_paths, query_paths = prepare_gallery(workdir, size, 100, seed, False)
    crops = [Path(p).read_bytes() for p in gallery_paths[:gallery_size]]
    queries = [Path(p).read_bytes() for p in query_paths]
    root = workdir / f"served-{gallery_size}"
    shutil.rmtree(root, ignore_errors=True)
    config = service.ServiceConfig(str(root), str(bundle), shards=shards, port=free_port(),
                                   token_sha256=service.token_digest(TOKEN))
    url = service.start(config)
    client = ServiceClient(url, TOKEN, timeout_s=600)
    while True:
        try:
            client.health()
            break
        except TalError:
            time.sleep(0.5)
    print(f"machine: {describe()}; load average at start {load()}")
    t0 = time.perf_counter()
    keys = []
    for start in range(0, len(crops), 32):
        keys += client.add(crops[start:start + 32], cameras=2, timestamps=1.0e9)
    added = time.perf_counter() - t0
    print(f"service: {shards} shards, {len(keys)} crops added through POST /add in "
          f"{added:.1f} s ({len(keys) / added:.1f} crops/s, 32 per request)", flush=True)

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        mine = ServiceClient(url, TOKEN, timeout_s=600)
        i = offset
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                mine.search(images=[queries[i % len(queries)]], k=10, candidates=candidates)
                with lock:
                    latencies.append(time.perf_counter() - t)
            except TalError:
                with lock:
                    errors[0] += 1
            i += clients

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies)
    rps = len(lat) / elapsed
    print(f"load: {clients} clients for {elapsed:.1f} s, POST /search with one crop, k=10, "
          f"{'exhaustive' if not candidates else f'M={candidates}'}: {len(lat)} answered, "
          f"{errors[0]} errors, {rps:.2f} requests/s, p50 {1000 * np.median(lat):.0f} ms, "
          f"p99 {1000 * np.percentile(lat, 99):.0f} ms", flush=True)

    api = ShardedGallery(root, bundle)          # the same shard folders, from this process
    sample = keys[:: max(1, len(keys) // 20)]
    via_http = client.search(keys=sample, k=10, candidates=candidates).hits
    via_api = api.search(api.features(sample), RetrievalOptions(topk=10,
                                                                candidates=candidates)).hits
    same = via_http == via_api
    print(f"{len(sample)} stored entries as queries: HTTP and Python API answers "
          f"{'identical' if same else 'DIFFER'}")
    service.stop()
    print(f"wall time {time.time() - started:.0f} s; load average at the end {load()}")
    print(f"serve: clients={clients} seconds={elapsed:.0f} requests={len(lat)} rps={rps:.2f} "
          f"p50_ms={1000 * np.median(lat):.0f} p99_ms={1000 * np.percentile(lat, 99):.0f} "
          f"errors={errors[0]} same_as_api={'true' if same else 'false'}")


if __name__ == "__main__":
    main()
