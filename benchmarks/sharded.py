"""The same gallery as one index and as 2 and 4 shards on a local Ray (tal_infer.cluster):
exhaustive rankings compared list by list (keys and scores), two-stage recall@10 against
exhaustive, queries/s and p50/p99 latency per configuration (queries one at a time; two-stage
after one untimed pass over the queries, see `timed`), Ray's overhead per query, and bulk
indexing crops/s with 1 and 2 Ray Data workers.

The model, crops and single index come from benchmarks/cascade.py's ``--workdir`` (the tal-demo
model with a distilled descriptor; galleries of generated unseen domains), made there when
missing. The shards hold the single index's feature rows (copied: the same values, in the dtype
a shard takes from the bundle; the bulk-indexing rows extract crops themselves). Both sides
compute pair-stable scores (`RetrievalOptions.stable_scores`, which sharded search always
uses); "differing lists" counts queries whose top-k keys or scores differ in any bit (summed
over the shard counts). "Ray overhead" is the median latency of a two-stage search through one
shard actor minus the same search in this process.

    python benchmarks/sharded.py --workdir .cache/cascade --size 100000
Last line: ``sharded: crops=N shards=1,2,4 differing_lists=D recall@10=R qps=Q1,Q2,Q4
overhead_ms=O`` (recall and queries/s of two-stage search; R of the largest shard count).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click
import numpy as np

from cascade import STORED_DTYPE, load, prepare_gallery, prepare_model
from machine import describe

from tal_infer.candidates import CandidateSearch
from tal_infer.cluster.bulk import build
from tal_infer.cluster.ray_support import connect
from tal_infer.cluster.shard import record_metadata
from tal_infer.cluster.sharded import ShardedGallery
from tal_infer.engine import ReIDEngine
from tal_infer.features import DESCRIPTOR
from tal_infer.images import read_image
from tal_infer.index import GalleryIndex, market_metadata
from tal_infer.retrieval import RetrievalOptions

COPY_ROWS = 5000  # rows per add while copying the single index into shards


# The cost model (docs/scale.md): a reference node, stated as assumed, not measured here.
NODE = {"gpus": 8, "gpu_bytes": 141e9, "ram_bytes": 2 * 2**40, "nvme_bytes": 8 * 3.84e12,
        "nvme_read_bps": 8 * 3e9, "net_bps": 100e9 / 8, "gpu_flops": 77e12}
# (streams S, locations per scale, channels C): the tiny and paper presets with K = 3
PRESETS = {"tiny": (4, (32, 8), 64), "paper": (4, (192, 48), 128)}
DESCRIPTOR_VALUES, STORED_BYTES, K_HITS, HIT_BYTES = 256, 2, 10, 200


def cost_rows(m: int = 200) -> list[str]:
    """Markdown rows of the cost model for 1M, 10M and 100M crops at both presets: one shard
    per GPU (its descriptors in FAISS on the GPU; its maps on the node's NVMe with the fewest
    nodes, or in host RAM with enough nodes), every query sent to every shard (the query's
    features once per node: Ray's object store shares them among the node's shards), each
    shard's two-stage search with M candidates and the default pre-rank (10 M, at most 5% of
    the shard)."""
    rows = []
    for preset, (streams, locations, channels) in PRESETS.items():
        maps = streams * sum(locations) * channels * STORED_BYTES
        per_crop = maps + DESCRIPTOR_VALUES * STORED_BYTES
        di_bytes = sum(locations) * channels * STORED_BYTES
        pair = streams * sum(2 * hw * hw * channels for hw in locations)
        di_pair = pair // streams
        for crops in (10**6, 10**7, 10**8):
            total = crops * per_crop
            by_faiss = crops * DESCRIPTOR_VALUES * 4 / (NODE["gpus"] * NODE["gpu_bytes"] * 0.8)
            tiers = {"RAM": total / NODE["ram_bytes"],
                     "NVMe": total / (NODE["ram_bytes"] + NODE["nvme_bytes"])}
            if tiers["RAM"] <= 1:
                del tiers["NVMe"]  # one node holds it in RAM: no NVMe row
            for tier, need in tiers.items():
                nodes = max(1, int(np.ceil(max(need, by_faiss))))
                shards = nodes * NODE["gpus"]
                width = min(10 * m, int(0.05 * crops / shards))
                stage1 = 2 * DESCRIPTOR_VALUES * crops
                stage2 = shards * (width * di_pair + m * pair)
                network = nodes * per_crop + shards * K_HITS * HIT_BYTES
                limits = {"GPU compute": nodes * NODE["gpus"] * NODE["gpu_flops"]
                          / (stage1 + stage2),
                          "network": NODE["net_bps"] / network}
                if tier == "NVMe":  # each node gathers its shards' rows per query
                    limits["NVMe reads"] = NODE["nvme_read_bps"] / (
                        NODE["gpus"] * (width * di_bytes + m * maps))
                first = min(limits, key=limits.get)
                rows.append(
                    f"| {preset} | {crops:,} | {per_crop:,} B | {total / 1e12:,.2f} TB "
                    f"| {tier} | {nodes} | {shards} | {stage1 / 1e9:,.1f} G "
                    f"| {stage2 / 1e9:,.1f} G | {network / 1e6:,.2f} MB "
                    f"| {limits[first]:,.0f} | {first} |")
    return rows


def timed(run, queries: dict, warm_pass: bool = False) -> tuple[list, np.ndarray]:
    """(per-query answers, seconds per query), queries one at a time, after one untimed
    query (snapshots and FAISS indexes are built on the first search) or, with
    ``warm_pass``, after all of them once untimed: two-stage search reads a few thousand
    scattered rows of the feature files per query, and a configuration whose files were not
    read before (a shard folder reopened) would otherwise pay the page faults in its timing
    while one searched exhaustively before has them in the page cache."""
    count = len(next(iter(queries.values()))) if warm_pass else 1
    for i in range(count):
        run({k: v[i:i + 1] for k, v in queries.items()})
    answers, seconds = [], []
    for i in range(len(next(iter(queries.values())))):
        one = {k: v[i:i + 1] for k, v in queries.items()}
        start = time.perf_counter()
        answers.append(run(one))
        seconds.append(time.perf_counter() - start)
    return answers, np.array(seconds)


def row(name: str, mode: str, seconds: np.ndarray, extra: str) -> str:
    return (f"| {name} | {mode} | {1 / seconds.mean():.2f} | {1000 * np.median(seconds):.1f} "
            f"| {1000 * np.percentile(seconds, 99):.1f} | {extra} |")


def copied(root: Path, shards: int, bundle: Path, contents) -> ShardedGallery:
    """A sharded gallery holding exactly the single index's rows (reused when it does)."""
    gallery = ShardedGallery(root, bundle, shards, search_timeout_s=3600, write_timeout_s=7200)
    if sum(gallery.check().values()) != len(contents):
        for start in range(0, len(contents), COPY_ROWS):
            stop = min(start + COPY_ROWS, len(contents))
            gallery.add_files(contents.paths[start:stop], contents.take(np.arange(start, stop)),
                              [record_metadata(r) for r in contents.records[start:stop]])
    return gallery


def recall(reference: list[list[str]], found: list[list[str]]) -> float:
    return float(np.mean([len(set(r[:10]) & set(f[:10])) / 10 for r, f in zip(reference, found)]))


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cache/cascade"),
              show_default=True, help="benchmarks/cascade.py's cache (model, crops, index).")
@click.option("--size", default=100_000, show_default=True, help="Gallery crops.")
@click.option("--queries", "num_queries", default=50, show_default=True)
@click.option("--shards", default="2,4", show_default=True, help="Shard counts.")
@click.option("--candidates", default=200, show_default=True, help="M of two-stage search.")
@click.option("--bulk-crops", default=2000, show_default=True,
              help="Crops indexed by the bulk-indexing rows.")
@click.option("--bulk-workers", default="1,2", show_default=True)
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Use this bundle (with a descriptor) instead of cascade.py's model.")
@click.option("--seed", default=7, show_default=True, help="Seed of the gallery domains.")
@click.option("--cost-model", is_flag=True, help="Print the cost model's table and stop.")
def main(workdir: Path, size: int, num_queries: int, shards: str, candidates: int,
         bulk_crops: int, bulk_workers: str, bundle: Path | None, seed: int,
         cost_model: bool) -> None:
    """Print the comparison tables and the last line."""
    if cost_model:
        print(f"reference node (assumed): {NODE}")
        print("| preset | crops | bytes per crop | gallery | maps in | nodes "
              "| shards (1 per GPU) | stage-1 FLOP/query | pre-rank + stage-2 FLOP/query "
              "| network bytes/query | queries/s | runs out first |")
        print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
        print("\n".join(cost_rows(candidates)))
        return
    started = time.time()
    bundle = bundle or prepare_model(workdir, progress=False)
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu", batch_size=64)
    gallery_paths, query_paths = prepare_gallery(workdir, size, num_queries, seed, False)
    index = GalleryIndex(workdir / f"index-{size}", engine.bundle.fingerprint,
                         engine.bundle.output_shapes, dtype=STORED_DTYPE)
    index.sync(gallery_paths, lambda batch: engine.embed([read_image(p) for p in batch]),
               market_metadata, batch_size=64)
    contents = index.load()
    queries = engine.embed_files(query_paths).features
    print(f"machine: {describe()}; load average at start {load()}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"gallery: {len(contents):,} crops, {num_queries} queries, top-10; two-stage: M = "
          f"{candidates}, pre-rank auto, exact FAISS stage 1", flush=True)
    exhaustive = RetrievalOptions(topk=10, stable_scores=True)
    cascade = RetrievalOptions(topk=10, candidates=candidates, stable_scores=True)
    paths = contents.paths

    def local(options):
        """One index searched in this process, its FAISS stage 1 built once (as a shard and
        the in-memory Gallery keep theirs), not per query."""
        plan = engine.plan(options)
        retriever = engine.retriever(plan)
        stage1 = None
        if plan.candidates:
            everything = contents.take(np.arange(len(contents)), [DESCRIPTOR])
            stage1 = CandidateSearch(everything[DESCRIPTOR], plan.stage1)
        return lambda q: [(paths[c], s) for c, s in
                          retriever.retrieve(q, contents, stage1=stage1).rows[0]]

    print("\n| configuration | search | queries/s | p50 ms | p99 ms | vs one index |")
    print("|---|---|---:|---:|---:|---:|")
    ref, seconds = timed(local(exhaustive), queries)
    print(row("1 index (this process)", "exhaustive", seconds, "-"), flush=True)
    best = [[k for k, _ in r] for r in ref]
    local_two, seconds = timed(local(cascade), queries, warm_pass=True)
    local_recall = recall(best, [[k for k, _ in r] for r in local_two])
    local_p50 = float(np.median(seconds))
    qps, recalls, differing = [1 / seconds.mean()], [local_recall], 0
    print(row("1 index (this process)", f"two-stage M={candidates}", seconds,
              f"recall@10 {local_recall:.4f}"), flush=True)
    connect()
    counts = [int(s) for s in shards.split(",")]
    overhead = None
    for n in [1, *counts]:
        gallery = copied(workdir / f"sharded-{size}-{n}", n, bundle, contents)

        def sharded(options, gallery=gallery):
            return lambda q: [(h.key, h.score) for h in gallery.search(q, options).hits[0]]

        if n > 1:
            found, seconds = timed(sharded(exhaustive), queries)
            differ = sum(f != r for f, r in zip(found, ref))
            differing += differ
            print(row(f"{n} shards (Ray)", "exhaustive", seconds,
                      f"differing lists {differ} of {len(ref)}"), flush=True)
        found, seconds = timed(sharded(cascade), queries, warm_pass=True)
        if n == 1:
            overhead = 1000 * (float(np.median(seconds)) - local_p50)
            print(row("1 shard (Ray)", f"two-stage M={candidates}", seconds,
                      f"Ray overhead {overhead:.1f} ms per query (p50)"), flush=True)
            continue
        r = recall(best, [[k for k, _ in f] for f in found])
        qps.append(1 / seconds.mean())
        recalls.append(r)
        print(row(f"{n} shards (Ray)", f"two-stage M={candidates}", seconds,
                  f"recall@10 {r:.4f}"), flush=True)
        for actor in gallery.actors:
            gallery.ray.kill(actor)
    print("\n| bulk indexing | workers | crops | seconds | crops/s |")
    print("|---|---:|---:|---:|---:|")
    for workers in (int(w) for w in bulk_workers.split(",")):
        root = workdir / f"bulk-{workers}"
        shutil.rmtree(root, ignore_errors=True)
        gallery = ShardedGallery(root, bundle, 2, write_timeout_s=7200)
        report = build(gallery, gallery_paths[:bulk_crops], workers=workers, batch_size=64)
        print(f"| 2 shards | {workers} | {report.extracted} | {report.seconds:.1f} "
              f"| {report.crops_per_s:.1f} |", flush=True)
        for actor in gallery.actors:
            gallery.ray.kill(actor)
    print(f"\nwall time {time.time() - started:.0f} s; load average at the end {load()}")
    print(f"sharded: crops={len(contents)} shards=1,{','.join(map(str, counts))} "
          f"differing_lists={differing} recall@10={recalls[-1]:.4f} "
          f"qps={','.join(f'{q:.2f}' for q in qps)} overhead_ms={overhead:.1f}")


if __name__ == "__main__":
    main()
